//! A FastCGI request multiplexed (FCGI_MPXS_CONNS: a new request id on a connection
//! that has one in flight) at a stop: at the final stop it is refused with END_REQUEST
//! FCGI_OVERLOADED and one log line, while the request in flight on the connection
//! finishes; at a reload it is served (README "FastCGI keep-alive across reloads").

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

fn unix(p: &Postern) -> UnixStream {
    let Addr::Unix(path) = &p.addr else { panic!() };
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Every record on `s` until END_REQUEST has come for each of `ids` (or EOF):
/// the replies by id.
fn replies(s: &mut UnixStream, ids: &[u16]) -> std::collections::BTreeMap<u16, fcgi::Reply> {
    let mut out: std::collections::BTreeMap<u16, fcgi::Reply> = Default::default();
    while ids
        .iter()
        .any(|id| out.get(id).is_none_or(|r| r.end.is_none()))
    {
        let Some(rec) = fcgi::read(s) else { break };
        let r = out.entry(rec.id).or_default();
        match rec.kind {
            fcgi::STDOUT => r.stdout.extend_from_slice(&rec.content),
            fcgi::STDERR => r.stderr.extend_from_slice(&rec.content),
            fcgi::END_REQUEST => {
                let c = &rec.content;
                r.end = Some((u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4]));
            }
            _ => {}
        }
    }
    out
}

/// protocolStatus FCGI_OVERLOADED (the FastCGI specification, section 5.5).
const OVERLOADED: u8 = 2;

/// Request 1 runs `/marked-sleep` on a kept connection (`inline`: sent whole, served
/// by the Python thread that read it; else its body trickles, so the slow lane has
/// it); the stop comes (SIGTERM: the final stop; `reload`: SIGHUP, the worker leaves
/// while a new one serves); then request 2 comes on the same connection.
fn a_new_id_during_a_stop(inline: bool, reload: bool) {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--master", "--threads", "4", "--graceful-timeout", "10"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let mut s = unix(&p);
    // A first request makes the connection a served one (parked when idle).
    s.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    let first = replies(&mut s, &[1]);
    assert_eq!(first[&1].cgi().0, 200);
    std::thread::sleep(Duration::from_millis(100));
    let mark = dir.path().join("running");
    let path = format!("/marked-sleep?s=3&mark={}", mark.display());
    if inline {
        s.write_all(&fcgi::get(1, true, &path)).unwrap();
    } else {
        // Its head and half its body: the slow lane reads the rest.
        let vars = fcgi::get_vars(&path);
        let mut v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        v.push(("CONTENT_LENGTH", "4"));
        s.write_all(&fcgi::head(1, true, &v)).unwrap();
        s.write_all(&fcgi::record(fcgi::STDIN, 1, b"ab")).unwrap();
    }
    if inline {
        assert!(wait_file(&mark, 20), "request 1 never ran\n{}", p.logs());
    }
    p.signal(if reload { libc::SIGHUP } else { libc::SIGTERM });
    let said = if reload {
        "new workers ready; old workers finish"
    } else {
        "stopping: workers finish their requests"
    };
    assert!(p.wait_log(said, 20), "{}", p.logs());
    std::thread::sleep(Duration::from_millis(200));
    // The new id, on the connection that has request 1 in flight.
    s.write_all(&fcgi::get(2, true, "/hello")).unwrap();
    if !inline {
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&fcgi::record(fcgi::STDIN, 1, b"cd")).unwrap();
        s.write_all(&fcgi::record(fcgi::STDIN, 1, b"")).unwrap();
    }
    let got = replies(&mut s, &[1, 2]);
    if !reload {
        p.wait_exit(20);
    }
    let logs = p.logs();
    let one = got.get(&1);
    assert!(
        one.is_some_and(|r| r.end == Some((0, 0)) && r.cgi().0 == 200),
        "request 1 (in flight at the stop) did not finish: {got:?}\n{logs}"
    );
    let two = got.get(&2);
    if reload {
        // Served: by the leaving worker, or (unread when request 1 ended) by the new
        // one, with the connection idle then.
        assert!(
            two.is_some_and(|r| r.end == Some((0, 0)) && r.cgi().2 == b"hello\n"),
            "request 2 (a new id during a reload) was not served: {got:?}\n{logs}"
        );
        return;
    }
    assert!(
        two.is_some_and(|r| r.end == Some((0, OVERLOADED)) && r.stdout.is_empty()),
        "request 2 (a new id during the stop) was neither served nor refused FCGI_OVERLOADED: {got:?}\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("fcgi_id=2")
            && l.contains("FCGI_OVERLOADED")
            && l.contains("postern stops")
            && l.contains(" WARN ")),
        "no line names the refused request\n{logs}"
    );
}

// regression: a new request id on a kept connection whose request in flight was served
// inline at the final stop: the connection closed after request 1's END_REQUEST, with
// no END_REQUEST for request 2 and no line in the log.
#[test]
fn a_new_id_on_an_inline_connection_at_the_final_stop_is_refused_overloaded() {
    a_new_id_during_a_stop(true, false);
}

#[test]
fn a_new_id_on_a_slow_lane_connection_at_the_final_stop_is_refused_overloaded() {
    a_new_id_during_a_stop(false, false);
}

// At a reload the connection goes on with the new workers once its requests in flight
// are over: a new id sent during one that runs inline is served.
#[test]
fn a_new_id_on_an_inline_connection_of_a_reloaded_worker_is_served() {
    a_new_id_during_a_stop(true, true);
}

/// A multiplexing client that always has a request in flight on its connection (two
/// ids, each sent again as soon as its answer has come, half a request apart): at a
/// reload the leaving worker holds the requests that begin on the connection from
/// then on, hands the connection on with them once its own have ended, and exits.
/// Every request is answered; those sent a second after the new worker is ready are
/// answered by it, and the old worker is gone well before --graceful-timeout.
/// regression (probe 411): the connection was never idle, so never handed over: the
/// leaving worker served every new id itself (past --max-requests at a recycle) until
/// --graceful-timeout cut what ran (exit 1).
#[test]
fn a_connection_always_in_flight_goes_on_with_the_new_workers_at_a_reload() {
    use std::time::Instant;
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--master", "--threads", "4", "--graceful-timeout", "30"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let mut s = unix(&p);
    let req = |id| fcgi::get(id, true, "/pid-sleep?s=0.3");
    let mut sent_at = [Instant::now(); 3];
    s.write_all(&req(1)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    sent_at[2] = Instant::now();
    s.write_all(&req(2)).unwrap();
    let mut replies: [fcgi::Reply; 3] = Default::default();
    // (when the request was sent, the pid that answered it)
    let mut answered: Vec<(Instant, String)> = Vec::new();
    let mut reload_sent = false;
    let mut ready_at: Option<Instant> = None;
    let mut in_flight = 2;
    let start = Instant::now();
    while in_flight > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(40) && answered.len() < 200,
            "the requests never ended\n{}",
            p.logs()
        );
        let rec = fcgi::read(&mut s)
            .unwrap_or_else(|| panic!("the connection closed: {answered:?}\n{}", p.logs()));
        let id = rec.id as usize;
        assert!(id == 1 || id == 2, "a record for id {id}");
        match rec.kind {
            fcgi::STDOUT => replies[id].stdout.extend_from_slice(&rec.content),
            fcgi::END_REQUEST => {
                let r = std::mem::take(&mut replies[id]);
                let (status, _, body) = r.cgi();
                assert_eq!(
                    (status, rec.content[4]),
                    (200, 0),
                    "request {id}: {body:?}\n{}",
                    p.logs()
                );
                answered.push((sent_at[id], String::from_utf8_lossy(&body).into_owned()));
                in_flight -= 1;
                if answered.len() == 4 && !reload_sent {
                    p.signal(libc::SIGHUP);
                    reload_sent = true;
                }
                if reload_sent
                    && ready_at.is_none()
                    && p.logs().contains("new workers ready; old workers finish")
                {
                    ready_at = Some(Instant::now());
                }
                // Sent again at once, until 3 s after the new worker is ready.
                if ready_at.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
                    sent_at[id] = Instant::now();
                    s.write_all(&req(id as u16)).unwrap();
                    in_flight += 1;
                }
            }
            _ => {}
        }
    }
    let ready_at = ready_at.unwrap_or_else(|| panic!("no reload\n{}", p.logs()));
    let old = answered[0].1.clone();
    let late: Vec<&String> = answered
        .iter()
        .filter(|(t, _)| *t > ready_at + Duration::from_secs(1))
        .map(|(_, pid)| pid)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|pid| **pid != old),
        "requests sent a second after the reload were still answered by the leaving worker {old}: {late:?}\n{}",
        p.logs()
    );
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    });
    assert!(
        gone,
        "the leaving worker {old} is still there\n{}",
        p.logs()
    );
    // The connection goes on with the new worker.
    s.write_all(&fcgi::get(1, true, "/pid")).unwrap();
    let got = replies_on(&mut s, 1);
    assert_ne!(got, old);
}

/// The body of request `id`'s answer on `s`.
fn replies_on(s: &mut UnixStream, id: u16) -> String {
    let r = replies(s, &[id]).remove(&id).expect("an answer");
    String::from_utf8_lossy(&r.cgi().2).into_owned()
}

/// Held as its worker leaves, a request whose connection then ends here (the request
/// in flight had no FCGI_KEEP_CONN: its END_REQUEST ends the connection) is refused
/// with FCGI_OVERLOADED and named in a WARN, never dropped unanswered.
#[test]
fn a_request_held_when_its_connection_ends_is_refused_overloaded() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--master", "--threads", "4", "--graceful-timeout", "10"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let mut s = unix(&p);
    s.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    assert_eq!(replies(&mut s, &[1])[&1].cgi().0, 200);
    // Request 1, without FCGI_KEEP_CONN, its body half sent: the slow lane has it.
    let vars = fcgi::get_vars("/sleep?s=3");
    let mut v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.push(("CONTENT_LENGTH", "4"));
    s.write_all(&fcgi::head(1, false, &v)).unwrap();
    s.write_all(&fcgi::record(fcgi::STDIN, 1, b"ab")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("new workers ready; old workers finish", 20),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&fcgi::get(2, true, "/hello")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&fcgi::record(fcgi::STDIN, 1, b"cd")).unwrap();
    s.write_all(&fcgi::record(fcgi::STDIN, 1, b"")).unwrap();
    let got = replies(&mut s, &[1, 2]);
    let logs = p.logs();
    assert!(
        got.get(&1)
            .is_some_and(|r| r.end == Some((0, 0)) && r.cgi().0 == 200),
        "request 1 did not finish: {got:?}\n{logs}"
    );
    assert!(
        got.get(&2)
            .is_some_and(|r| r.end == Some((0, OVERLOADED)) && r.stdout.is_empty()),
        "request 2 (held) was neither served nor refused: {got:?}\n{logs}"
    );
    // Written once the END_REQUEST is out: waited for.
    assert!(
        p.wait_log(
            "the FastCGI connection ends while requests on it were held",
            10
        ),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(20);
}

/// A request answered early (413, its body still coming) on a connection whose other
/// requests a leaving worker holds: the connection goes to the new worker with its id,
/// and the rest of that body is read there quietly; the connection, idle after it past
/// --head-timeout, goes on serving.
/// regression (review 421, MEDIUM): the id did not travel; the new worker took the
/// rest for records of an id no BEGIN_REQUEST named, and closed the kept connection at
/// --head-timeout with a WARN (a request the front server sent on it then was lost).
#[test]
fn the_rest_of_a_body_answered_early_goes_with_held_requests_to_the_new_worker() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args([
            "--master",
            "--threads",
            "4",
            "--graceful-timeout",
            "30",
            "--max-body",
            "1000",
            "--head-timeout",
            "2",
        ])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let mut s = unix(&p);
    s.write_all(&fcgi::get(1, true, "/pid")).unwrap();
    let old = replies_on(&mut s, 1);
    // Request 1 runs; request 2, a POST past --max-body, is answered 413 before the
    // rest of its body.
    s.write_all(&fcgi::get(1, true, "/pid-sleep?s=3")).unwrap();
    post_answered_early(&p, &mut s);
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("new workers ready; old workers finish", 20),
        "{}",
        p.logs()
    );
    // Held by the leaving worker while request 1 runs.
    s.write_all(&fcgi::get(3, true, "/pid")).unwrap();
    let got = replies(&mut s, &[1, 3]);
    let pid = |id: u16| String::from_utf8_lossy(&got[&id].cgi().2).into_owned();
    assert_eq!(pid(1), old, "{got:?}\n{}", p.logs());
    assert_ne!(pid(3), old, "request 3 was not held: {got:?}\n{}", p.logs());
    rest_then_served(&p, &mut s);
    p.signal(libc::SIGTERM);
    p.wait_exit(20);
}

/// A request answered early (413) on a kept connection that then parks in a worker
/// whose only thread gets busy: the rest of that body wakes the connection, which goes
/// to a worker with a free thread with the id, and that worker reads it quietly.
/// regression (review 423, MEDIUM): that hand-over (`Parking::relieve`) carried no ids,
/// and the other worker closed the connection at --head-timeout with a WARN.
#[test]
fn the_rest_of_a_body_answered_early_goes_with_a_connection_relieved_of_a_busy_worker() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args([
            "--master",
            "--workers",
            "2",
            "--threads",
            "1",
            "--max-body",
            "1000",
            "--head-timeout",
            "2",
        ])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    let mut s = unix(&p);
    s.write_all(&fcgi::get(1, true, "/pid")).unwrap();
    let old = replies_on(&mut s, 1);
    post_answered_early(&p, &mut s);
    std::thread::sleep(Duration::from_millis(300));
    // The old worker's only thread busy: connections until one lands there (the other
    // worker answers at once).
    let pin = (0..40).find_map(|_| {
        let mut t = unix(&p);
        t.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        t.write_all(&fcgi::get(1, true, &format!("/pid-sleep?pid={old}&s=8")))
            .unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read(&mut t, &mut b).is_err().then_some(t)
    });
    assert!(
        pin.is_some(),
        "the old worker was never pinned\n{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    rest_then_served(&p, &mut s);
    // The rest of the body went with the connection to the other worker.
    assert!(
        p.logs().contains("goes to a worker with a free thread"),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(20);
}

/// The same for an idle kept connection handed over at a reload.
#[test]
fn the_rest_of_a_body_answered_early_goes_with_an_idle_connection_at_a_reload() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args([
            "--master",
            "--threads",
            "2",
            "--max-body",
            "1000",
            "--head-timeout",
            "2",
        ])
        .start();
    assert!(p.wait_log("all 1 workers ready", 30), "{}", p.logs());
    let mut s = unix(&p);
    s.write_all(&fcgi::get(1, true, "/pid")).unwrap();
    let old = replies_on(&mut s, 1);
    post_answered_early(&p, &mut s);
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("idle FastCGI keep-alive connections handed over", 20),
        "{}",
        p.logs()
    );
    assert_ne!(rest_then_served(&p, &mut s), old);
    p.signal(libc::SIGTERM);
    p.wait_exit(20);
}

/// Request 2 on `s`: a POST past `--max-body 1000` (CONTENT_LENGTH 3000), 800 bytes of
/// its body sent: answered 413 before the rest of it.
fn post_answered_early(p: &Postern, s: &mut UnixStream) {
    let mut vars = fcgi::get_vars("/echo");
    vars[0].1 = "POST".into();
    vars.push(("CONTENT_LENGTH", "3000".into()));
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.write_all(&fcgi::head(2, true, &v)).unwrap();
    s.write_all(&fcgi::record(fcgi::STDIN, 2, &[b'a'; 800]))
        .unwrap();
    let got = replies(s, &[2]);
    assert_eq!(got[&2].cgi().0, 413, "{got:?}\n{}", p.logs());
}

/// The rest of request 2's body on `s`, then nothing past `--head-timeout 2`: the
/// connection still serves a request (its answer, a pid, is returned), and no worker
/// took those records for strays.
fn rest_then_served(p: &Postern, s: &mut UnixStream) -> String {
    for part in [
        &[b'b'; 800][..],
        &[b'c'; 800][..],
        &[b'd'; 600][..],
        &[][..],
    ] {
        s.write_all(&fcgi::record(fcgi::STDIN, 2, part)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(3000));
    // (Closed, the write fails or nothing comes back.)
    let _ = s.write_all(&fcgi::get(4, true, "/pid"));
    let got = replies(s, &[4]);
    let logs = p.logs();
    assert!(
        got.get(&4).is_some_and(|r| r.end == Some((0, 0))),
        "the connection did not go on: {got:?}\n{logs}"
    );
    assert!(!logs.contains("no BEGIN_REQUEST named"), "{logs}");
    String::from_utf8_lossy(&got[&4].cgi().2).into_owned()
}
