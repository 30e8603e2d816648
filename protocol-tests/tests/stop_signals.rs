//! Signals the master takes during a graceful stop: each one it does not act on
//! (SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2) gets a line.
//! regression: they were dropped without a word.

use protocol_tests::harness::*;

#[test]
fn signals_during_a_stop_are_said_to_be_ignored() {
    let dir = tempdir();
    let path = dir.path().join("slow.py");
    let mark = dir.path().join("in-the-app");
    // The request runs until the test deletes the gate (after the signals), not for a
    // fixed time a loaded CI might not fit the signals' round trips in (up to 30 s).
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    std::fs::write(
        &path,
        format!("import os, time\n\ndef application(environ, start_response):\n    if environ['PATH_INFO'] == '/slow':\n        open({:?}, 'w').close()\n        for _ in range(3000):\n            if not os.path.exists({:?}):\n                break\n            time.sleep(0.01)\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n", mark.to_string_lossy(), gate.to_string_lossy()),
    )
    .unwrap();
    let mut p = Spawn::unix(dir.path(), &path.to_string_lossy())
        .args(["--master", "--workers", "1", "--graceful-timeout", "40"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let addr = p.addr.clone();
    let slow = std::thread::spawn(move || {
        raw(
            &addr,
            &uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/slow")]),
        )
    });
    assert!(wait_file(&mark, 10), "{}", p.logs());
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_log("stopping: no new connections", 10),
        "{}",
        p.logs()
    );
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
        (libc::SIGUSR2, "SIGUSR2"),
    ] {
        p.signal(sig);
        let line = format!("{name} ignored: postern is stopping");
        assert!(p.wait_log(&line, 10), "{line}\n{}", p.logs());
    }
    std::fs::remove_file(&gate).unwrap();
    let status = p.wait_exit(20);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        p.logs()
    );
    let answer = slow.join().unwrap();
    assert!(
        answer.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
