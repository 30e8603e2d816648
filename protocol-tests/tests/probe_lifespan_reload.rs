//! Probe (session 10): an ASGI worker whose lifespan shutdown hangs, at a reload. The
//! old worker's shutdown runs after its requests (it may take up to
//! `--lifespan-timeout`, past `--graceful-timeout`), and meanwhile the new generation
//! serves every request: a hung shutdown delays only the old worker's exit.
//! Found to hold (behind nginx under a 50-connection load, 184k requests, 0 errors);
//! pinned here without nginx.

use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// Answers `pid=PID`; the lifespan shutdown writes `shutdown PID` to `events`, then
/// sleeps 30 s (past --graceful-timeout, within --lifespan-timeout).
fn app(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let events = dir.join("events.txt");
    let code = format!(
        r#"import asyncio, os
EVENTS = {events:?}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({{"type": "lifespan.startup.complete"}})
        await receive()
        with open(EVENTS, "a") as f:
            f.write("shutdown %d\n" % os.getpid())
        await asyncio.sleep(30)
        await send({{"type": "lifespan.shutdown.complete"}})
        return
    body = ("pid=%d" % os.getpid()).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"#,
        events = events.to_string_lossy(),
    );
    let path = dir.join("hang_app.py");
    std::fs::write(&path, code).unwrap();
    (path.to_string_lossy().into_owned(), events)
}

fn pid_of(body: &[u8]) -> i32 {
    let text = String::from_utf8_lossy(body);
    text.strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {text:?}"))
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn a_hung_lifespan_shutdown_at_a_reload_does_not_hold_up_the_new_generation() {
    let dir = tempdir();
    let (app, events) = app(dir.path());
    let p = Spawn::unix(dir.path(), &app)
        .args([
            "--interface",
            "asgi",
            "--master",
            "--workers",
            "1",
            "--graceful-timeout",
            "2",
        ])
        .start();
    assert!(p.wait_log("all 1 workers ready", 30), "{}", p.logs());
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    let old = pid_of(&body);

    p.signal(libc::SIGHUP);
    // The new worker serves once it is up; the old one sits in its shutdown.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let (status, body) = p.get("/");
        assert_eq!(status, 200, "{}", p.logs());
        let pid = pid_of(&body);
        if pid != old {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new worker served:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains(&format!("shutdown {old}"))
    {
        assert!(
            Instant::now() < deadline,
            "the old worker's shutdown did not begin:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past the old worker's --graceful-timeout: still in its shutdown, and every request
    // goes to the new generation.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        alive(old),
        "the old worker left before its shutdown ended:\n{}",
        p.logs()
    );
    for _ in 0..20 {
        let (status, body) = p.get("/");
        assert_eq!(status, 200, "{}", p.logs());
        assert_eq!(pid_of(&body), new, "{}", p.logs());
    }
    // The old worker would sit in its shutdown for up to 30 s more: not the test's wait.
    unsafe { libc::kill(old, libc::SIGKILL) };
}
