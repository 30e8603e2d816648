//! SIGTTOU while a worker is still importing the app (a SIGTTIN just before): that
//! worker goes, at once (killed: it never served), not a serving one, and its exit is
//! no failed start.
//! regression: the newest worker was told to leave even while importing: it finished
//! its import (and an ASGI lifespan startup), said "worker ready", then left, and a
//! SIGTTIN/SIGTTOU storm reached 129 processes.

use std::time::Duration;

use protocol_tests::harness::*;

#[test]
fn sigttou_kills_the_worker_still_importing_not_a_serving_one() {
    let dir = tempdir();
    let slow = dir.path().join("slow-imports");
    let importing = dir.path().join("importing");
    let path = dir.path().join("slowimport.py");
    std::fs::write(
        &path,
        format!(
            "import os, time\n\nif os.path.exists({slow:?}):\n    open({importing:?}, 'w').close()\n    time.sleep(60)\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n",
            slow = slow.to_string_lossy(),
            importing = importing.to_string_lossy()
        ),
    )
    .unwrap();
    let mut p = Spawn::unix(dir.path(), &path.to_string_lossy())
        .args([
            "--master",
            "--workers",
            "1",
            "--worker-start-timeout",
            "120",
        ])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let serving = children(p.pid());
    assert_eq!(serving.len(), 1, "{serving:?}\n{}", p.logs());
    std::fs::write(&slow, "").unwrap();
    p.signal(libc::SIGTTIN);
    assert!(wait_file(&importing, 20), "{}", p.logs());
    let both = children(p.pid());
    let new: Vec<i32> = both
        .iter()
        .copied()
        .filter(|c| !serving.contains(c))
        .collect();
    assert_eq!(new.len(), 1, "{both:?}\n{}", p.logs());
    p.signal(libc::SIGTTOU);
    assert!(
        wait_until(10, || gone(new[0])),
        "the importing worker {} still runs\n{}",
        new[0],
        p.logs()
    );
    assert!(
        p.wait_log("the worker still importing the app is killed", 5),
        "{}",
        p.logs()
    );
    // The serving worker serves on: not told to leave.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gone(serving[0]), "{}", p.logs());
    let (status, body) = p.get("/");
    assert_eq!(status, 200, "{}", p.logs());
    assert_eq!(
        String::from_utf8_lossy(&body),
        serving[0].to_string(),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(!logs.contains("failed to start"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(20);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        p.logs()
    );
}
