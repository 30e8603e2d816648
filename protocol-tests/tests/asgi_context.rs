//! A request's ContextVars belong to that request: another request, at the same time or
//! later, never sees them, whatever the worker did in between (here: paused reading at
//! `--max-concurrency` and resumed at a request's end).

use protocol_tests::harness::{tempdir, AsgiApp, Spawn};

/// `/set?X` answers what `REQ` held on entry, sets it to X and waits a little; `/get`
/// answers what it holds.
fn app() -> String {
    AsgiApp::new(
        r#"
import asyncio, contextvars

REQ = contextvars.ContextVar("REQ", default=None)
"#,
    )
    .http(
        r#"
before = REQ.get()
if scope["path"] == "/set":
    REQ.set(scope["query_string"].decode())
    await asyncio.sleep(0.3)
await send({"type": "http.response.start", "status": 200, "headers": []})
await send({"type": "http.response.body", "body": repr(before).encode()})
"#,
    )
}

#[test]
fn a_requests_context_vars_are_not_seen_by_later_requests_after_a_pause() {
    // regression: at --max-concurrency 1 the second request waited; the first one's end
    // resumed the reading inside its own task's step, so the loop's reader callback and
    // the next tasks started from that request's context: every later request saw
    // REQ == "first" (a FastAPI dependency's user variable leaked into 98 requests of
    // 100 behind nginx).
    for event_loop in ["asyncio", "uvloop"] {
        let dir = tempdir();
        let Some(spawn) = Spawn::asgi_tcp(dir.path(), "asgi_context_app", &app())
            .args(["--max-concurrency", "1"])
            .event_loop(event_loop)
        else {
            continue;
        };
        let p = spawn.start();
        std::thread::scope(|s| {
            let first = s.spawn(|| p.get("/set?first"));
            std::thread::sleep(std::time::Duration::from_millis(100));
            let second = s.spawn(|| p.get("/get"));
            assert_eq!(
                first.join().unwrap(),
                (200, b"None".to_vec()),
                "{event_loop}"
            );
            assert_eq!(
                second.join().unwrap(),
                (200, b"None".to_vec()),
                "{event_loop}"
            );
        });
        for _ in 0..3 {
            assert_eq!(
                p.get("/get"),
                (200, b"None".to_vec()),
                "{event_loop}: {}",
                p.logs()
            );
        }
        assert_eq!(p.get("/set?later"), (200, b"None".to_vec()), "{event_loop}");
        assert_eq!(p.get("/get"), (200, b"None".to_vec()), "{event_loop}");
    }
}
