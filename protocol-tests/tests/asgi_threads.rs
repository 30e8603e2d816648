//! What an ASGI request leaves behind may be freed on any Python thread: the cyclic GC
//! runs on whichever thread allocates when a collection is due (an executor thread
//! running the app's sync code, Datasette's SQL threads), and an app may hand `send`
//! or `receive` to a thread. The request's exchange must be freed there like any other
//! object: not leaked, and no traceback on stderr.

use protocol_tests::harness::{tempdir, AsgiApp, Spawn};

/// Each request leaves its `send` and `receive` in a reference cycle; `/collect` runs
/// the cyclic GC on an executor thread and answers how many objects it freed; `/thread`
/// drops a request's `receive` on a thread of its own.
fn app() -> String {
    AsgiApp::new(
        r#"
import asyncio, gc, threading

gc.disable()

class Leftover:
    pass

def collect():
    return gc.collect()
"#,
    )
    .http(
        r#"
left = Leftover()
left.me = left
left.channel = (receive, send)
del left
body = b"ok"
if scope["path"] == "/collect":
    body = str(await asyncio.get_running_loop().run_in_executor(None, collect)).encode()
elif scope["path"] == "/thread":
    held = [receive]
    t = threading.Thread(target=held.clear)
    t.start()
    await asyncio.get_running_loop().run_in_executor(None, t.join)
await send({"type": "http.response.start", "status": 200, "headers": []})
await send({"type": "http.response.body", "body": body})
"#,
    )
}

#[test]
fn a_requests_exchange_freed_on_another_thread_is_freed_without_a_traceback() {
    // regression: the exchange was a class pyo3 keeps to the loop's thread; freed by the
    // GC on an executor thread it was leaked (about 2 KiB a request: Datasette behind
    // nginx leaked on one request in three) and "HttpExchange is unsendable, but is being
    // dropped on another thread" went to stderr as a raw traceback each time.
    let dir = tempdir();
    let p = Spawn::asgi_tcp(dir.path(), "asgi_threads_app", &app())
        .args(["--loop", "asyncio"])
        .start();
    for _ in 0..20 {
        assert_eq!(p.get("/"), (200, b"ok".to_vec()), "{}", p.logs());
    }
    let (status, freed) = p.get("/collect");
    assert_eq!(status, 200, "{}", p.logs());
    let freed: usize = String::from_utf8_lossy(&freed).parse().unwrap();
    // Each earlier request's cycle: the Leftover, its dict, the tuple and the two bound
    // methods at least; the exchanges in them were freed on the executor's thread.
    assert!(freed >= 20 * 4, "the GC freed only {freed} objects");
    for _ in 0..5 {
        assert_eq!(p.get("/thread"), (200, b"ok".to_vec()), "{}", p.logs());
    }
    assert_eq!(p.get("/collect").0, 200);
    // The server goes on serving, and nothing was written about the exchanges.
    assert_eq!(p.get("/"), (200, b"ok".to_vec()));
    let logs = p.logs();
    assert!(!logs.contains("unsendable"), "{logs}");
    assert!(!logs.contains("Traceback"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}
