//! Timeouts set absurdly short (under a millisecond) are odd but harmless: the server
//! still idles and stops.

use std::time::Duration;

use protocol_tests::harness::{tempdir, testapp, Spawn};

// regression: --head-timeout 0.0000001 made the I/O thread loop on deadlines that had
// passed without yielding (its timer returned at once): 100% CPU while idle, and
// SIGTERM never seen (the process had to be killed).
#[test]
fn a_head_timeout_under_a_millisecond_still_lets_postern_stop() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .args(["--head-timeout", "0.0000001"])
        .start();
    std::thread::sleep(Duration::from_millis(500));
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(30);
    assert!(
        status.is_some(),
        "still running 30 s after SIGTERM:\n{}",
        p.logs()
    );
}
