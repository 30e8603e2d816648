//! What the master says of a worker killed by a signal while it imports the app,
//! outside a reload: the signal, not "the app's error is logged above" (README
//! "Workers, reloads and timeouts").

use protocol_tests::harness::*;

/// Once the file `slow` exists beside it, an import waits for it to go.
const SLOW_APP: &str = "import os, time\n\nhere = os.path.dirname(__file__)\nwhile os.path.exists(os.path.join(here, 'slow')):\n    time.sleep(0.01)\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n";

/// The pid in the last log line that has all of `needles`.
fn last_pid(logs: &str, needles: &[&str]) -> Option<i32> {
    let line = logs
        .lines()
        .rfind(|l| needles.iter().all(|n| l.contains(n)))?;
    line.split("pid=").nth(1)?.split(' ').next()?.parse().ok()
}

// regression: a crashed worker's replacement SIGKILLed during its import (the OOM
// killer, a kill -9) was logged "worker failed to start (the app's error is logged
// above: code on disk that does not import?)", with no error of the app's anywhere.
// It still counts as a failed start (the backoff): an import killed every time (over a
// memory limit) fails as surely as code that does not import.
#[test]
fn a_replacement_killed_during_its_import_is_said_killed_not_failing_code() {
    let dir = tempdir();
    let app = dir.path().join("slow.py");
    std::fs::write(&app, SLOW_APP).unwrap();
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--master", "--workers", "1"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let (status, body) = p.get("/");
    assert_eq!(status, 200, "{}", p.logs());
    let first: i32 = String::from_utf8_lossy(&body).parse().unwrap();
    std::fs::write(dir.path().join("slow"), "").unwrap();
    unsafe { libc::kill(first, libc::SIGKILL) };
    assert!(
        p.wait_log("worker died unexpectedly; replacing it", 20),
        "{}",
        p.logs()
    );
    assert!(p.wait_log("cause=\"crash\"", 20), "{}", p.logs());
    let replacement = last_pid(&p.logs(), &["worker started", "cause=\"crash\""]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(replacement, libc::SIGKILL) };
    let needle = format!("pid={replacement} ");
    let line = || {
        p.logs()
            .lines()
            .find(|l| l.contains(&needle) && l.contains("failed to start"))
            .map(str::to_owned)
    };
    assert!(wait_until(20, || line().is_some()), "{}", p.logs());
    let line = line().unwrap();
    assert!(
        line.contains(" ERROR ")
            && line.contains("worker failed to start: killed by SIGKILL during its import (out of memory? the kernel log says), not the app's code failing; trying again in")
            && line.contains("failures=1")
            && !line.contains("the app's error is logged above"),
        "{line}"
    );
    // The next one imports and serves.
    std::fs::remove_file(dir.path().join("slow")).unwrap();
    assert!(wait_until(30, || p.get("/").0 == 200), "{}", p.logs());
}
