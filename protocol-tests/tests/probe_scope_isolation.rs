//! Probes (hostile, session 9): what an ASGI app does to its scope stays in its own
//! request. Middleware writes into the scope (an auth layer's `user`, a router's
//! `path_params`, a header appended to the list), and a careless app may change the
//! `asgi` and `extensions` dicts or the lifespan state's keys; the scope of the next
//! request, on the same worker and loop, built from what the front server sent as the
//! one before was (postern reuses buffers and interned values between requests), must
//! show none of it. Checked over uwsgi and FastCGI, for a repeat of the same request
//! and for one that differs.

use protocol_tests::harness::{tempdir, uwsgi_packet, AsgiApp, Spawn};

const PRELUDE: &str = "import json";

const HTTP: &str = r#"
seen = {
    "extra": sorted(k for k in scope if k in ("user", "path_params", "poison")),
    "asgi": dict(scope["asgi"]),
    "extensions": {k: dict(v) for k, v in scope.get("extensions", {}).items()},
    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
    "state": sorted(scope.get("state", {})),
    "path": scope["path"],
    "query_string": scope["query_string"].decode("latin-1"),
    "root_path": scope["root_path"],
}
scope["user"] = "someone"
scope["path_params"] = {"id": scope["path"]}
scope["poison"] = True
scope["headers"].append((b"x-added-by-app", b"1"))
scope["asgi"]["version"] = "2.0"
scope["asgi"]["poison"] = 1
scope.setdefault("extensions", {})["poison"] = {}
for v in scope["extensions"].values():
    v["poison"] = 1
if "state" in scope:
    scope["state"]["poison"] = 1
scope["path"] = "/changed"
scope["query_string"] = b"changed"
scope["root_path"] = "/changed"
body = json.dumps(seen).encode()
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
await send({"type": "http.response.body", "body": body})
"#;

fn vars<'a>(path: &'a str, query: &'a str, uri: &'a str, tag: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_X_TAG", tag),
    ]
}

/// One FastCGI request (id 1, no keep-conn) with `pairs`; the response's stdout.
fn fastcgi(p: &protocol_tests::harness::Postern, pairs: &[(&str, &str)]) -> Vec<u8> {
    fn record(kind: u8, content: &[u8]) -> Vec<u8> {
        let mut r = vec![1, kind, 0, 1];
        r.extend_from_slice(&(content.len() as u16).to_be_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(content);
        r
    }
    let mut params = Vec::new();
    for (k, v) in pairs.iter().chain(&[("SCRIPT_NAME", "")]) {
        assert!(k.len() < 128 && v.len() < 128);
        params.extend_from_slice(&[k.len() as u8, v.len() as u8]);
        params.extend_from_slice(k.as_bytes());
        params.extend_from_slice(v.as_bytes());
    }
    let mut req = record(1, &[0, 1, 0, 0, 0, 0, 0, 0]);
    req.extend(record(4, &params));
    req.extend(record(4, b""));
    req.extend(record(5, b""));
    let out = p.raw(&req);
    let (mut i, mut stdout) = (0, Vec::new());
    while i + 8 <= out.len() {
        let len = u16::from_be_bytes([out[i + 4], out[i + 5]]) as usize;
        let pad = out[i + 6] as usize;
        if out[1 + i] == 6 {
            stdout.extend_from_slice(&out[i + 8..i + 8 + len]);
        }
        i += 8 + len + pad;
    }
    stdout
}

fn seen(resp: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(resp);
    let body = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {text}"))
        .1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn check(v: &serde_json::Value, path: &str, query: &str, tag: &str, state: bool) {
    assert_eq!(v["extra"], serde_json::json!([]), "{v:#}");
    assert_eq!(
        v["asgi"],
        serde_json::json!({"version": "3.0", "spec_version": "2.4"}),
        "{v:#}"
    );
    assert_eq!(
        v["extensions"],
        serde_json::json!({"http.response.pathsend": {}}),
        "{v:#}"
    );
    assert_eq!(
        v["headers"],
        serde_json::json!([["host", "localhost"], ["x-tag", tag]]),
        "{v:#}"
    );
    let keys = if state {
        serde_json::json!(["pool"])
    } else {
        serde_json::json!([])
    };
    assert_eq!(v["state"], keys, "{v:#}");
    assert_eq!(v["path"], path, "{v:#}");
    assert_eq!(v["query_string"], query, "{v:#}");
    assert_eq!(v["root_path"], "", "{v:#}");
}

fn run(protocol: &'static str, lifespan_state: bool) {
    let dir = tempdir();
    let app = if lifespan_state {
        AsgiApp::new(PRELUDE)
            .on_startup(r#"scope["state"]["pool"] = "<pool>""#)
            .http(HTTP)
    } else {
        AsgiApp::new(PRELUDE).http(HTTP)
    };
    let module = format!("probe_scope_isolation_{protocol}");
    let p = Spawn::asgi_unix(dir.path(), &module, &app)
        .protocol(protocol)
        .args(["--loop", "asyncio", "--access-log", "off"])
        .start();
    let ask = |path: &str, query: &str, uri: &str, tag: &str| {
        let v = vars(path, query, uri, tag);
        if protocol == "fastcgi" {
            seen(&fastcgi(&p, &v))
        } else {
            seen(&p.raw(&uwsgi_packet(&v)))
        }
    };
    // A repeat of the same request, then one that differs, then the first again: one
    // worker, one thread, so each follows the one before on the same loop.
    for (path, query, uri, tag) in [
        ("/a", "q=1", "/a?q=1", "one"),
        ("/a", "q=1", "/a?q=1", "one"),
        ("/b/c", "", "/b/c", "two"),
        ("/a", "q=1", "/a?q=1", "one"),
    ] {
        check(
            &ask(path, query, uri, tag),
            path,
            query,
            tag,
            lifespan_state,
        );
    }
}

#[test]
fn an_apps_changes_to_its_scope_do_not_reach_the_next_request_over_uwsgi() {
    run("uwsgi", false);
}

#[test]
fn an_apps_changes_to_its_scope_do_not_reach_the_next_request_over_fastcgi() {
    run("fastcgi", false);
}

#[test]
fn an_apps_changes_to_the_lifespan_state_copy_do_not_reach_the_next_request() {
    run("uwsgi", true);
}
