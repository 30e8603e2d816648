//! Regressions found by reviewing the ASGI path with the real binary: each test pins a
//! bug that was seen (its `// regression:` line says which) and is fixed now. The app
//! is a tiny ASGI app written here (no framework), served over raw uwsgi.

use std::path::Path;

use protocol_tests::harness::{parse_http, tempdir, uwsgi_packet, Postern, Response, Spawn};

const APP: &str = r#"
import asyncio

async def answer(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path, q = scope["path"], scope["query_string"].decode()
    if path == "/hello":
        await answer(send, b"hello")
    elif path == "/base":
        exc = {"exit": SystemExit, "kbi": KeyboardInterrupt}[q]
        raise exc("raised by the app")
    elif path == "/base-after":
        exc = {"exit": SystemExit, "kbi": KeyboardInterrupt}[q]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise exc("raised by the app after the start")
"#;

fn serve(dir: &Path, extra: &[&str]) -> Postern {
    std::fs::write(dir.join("asgi_review_app.py"), APP).unwrap();
    Spawn::tcp(dir, "asgi_review_app:app")
        .cwd(dir)
        .args(["--interface", "asgi", "--loop", "asyncio"])
        .args(extra.iter().copied())
        .start()
}

/// A GET over uwsgi: the parsed response, or None when the connection gave none
/// (aborted).
fn get(p: &Postern, path: &str, query: &str) -> Option<Response> {
    let uri = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let out = p.raw(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("REQUEST_URI", &uri),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]));
    parse_http(&out)
}

#[test]
fn an_app_raising_system_exit_or_keyboard_interrupt_answers_500_and_the_worker_serves_on() {
    // regression: SystemExit/KeyboardInterrupt raised by a request's task left asyncio's
    // run_forever, the event loop thread ended and the worker process stayed up serving
    // nothing (every later request waited in the listen queue for ever).
    let dir = tempdir();
    let p = serve(dir.path(), &[]);
    for q in ["exit", "kbi"] {
        let r = get(&p, "/base", q).expect("a response");
        assert_eq!(r.status, 500, "{q}");
        let r = get(&p, "/hello", "").expect("the worker still serves");
        assert_eq!(r.body, b"hello", "{q}");
        // After the start: the response is aborted, and the worker goes on.
        let _ = get(&p, "/base-after", q);
        let r = get(&p, "/hello", "").expect("the worker still serves");
        assert_eq!(r.body, b"hello", "{q}");
    }
    assert!(
        p.logs()
            .contains("the app raised an exception; answered 500"),
        "{}",
        p.logs()
    );
    assert!(
        !p.logs().contains("the ASGI event loop failed"),
        "{}",
        p.logs()
    );
}
