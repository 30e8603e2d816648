//! The ASGI HTTP connection scope (docs/protocols.md §7) with the real binary behind a
//! real nginx: `uwsgi_pass`, `fastcgi_pass` (with and without keep-conn) and `scgi_pass`,
//! each with nginx's stock variables. Every field is checked byte for byte (bytes travel
//! as latin-1 text in the app's JSON): paths mounted by `--mount` and not, non-ASCII and
//! non-UTF-8 paths, `raw_path`, the query string, headers (each once, no empty
//! content-type/content-length, cookies joined), client, server, the lifespan state (a
//! copy per request) and `extensions`. Then the same through Apache (mod_proxy_fcgi with
//! deploy/apache's `proxy-fcgi-pathinfo` recipe, and mod_proxy_uwsgi) at a prefix, where
//! Apache does the SCRIPT_NAME split. Needs nginx and Apache: fails in CI if missing.

use protocol_tests::apache::{apache_bin, deploy_conf, start_postern, Apache, Proto};
use protocol_tests::harness::{
    nginx_bin, parse_http, tempdir, Addr, AsgiApp, Nginx, Postern, Response, Spawn,
};
use protocol_tests::stack::Upstream;
use serde_json::{json, Value};

/// Answers every request with its scope as JSON; bytes as latin-1 text (one char per
/// byte), so the test sees the exact bytes. Lifespan startup stores `started` in the
/// state; each request adds `mine` to its own copy and reports the keys it found.
fn source() -> String {
    AsgiApp::new(
        r#"
import json

def text(b):
    return None if b is None else b.decode("latin-1")
"#,
    )
    .on_startup(r#"scope["state"]["started"] = "yes""#)
    .http(HTTP)
}

/// The body of `app` for the http scope.
const HTTP: &str = r#"
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    state = scope.get("state")
    state_keys = None if state is None else sorted(state)
    if state is not None:
        state["mine"] = scope["path"]
    out = {
        "keys": sorted(scope),
        "type": scope["type"],
        "asgi": scope["asgi"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": text(scope["raw_path"]),
        "query_string": text(scope["query_string"]),
        "root_path": scope["root_path"],
        "headers": [[text(n), text(v)] for n, v in scope["headers"]],
        "types": sorted({type(x).__name__ for h in scope["headers"] for x in h}
                        | {type(scope["path"]).__name__, type(scope["query_string"]).__name__}),
        "client": None if scope["client"] is None else list(scope["client"]),
        "server": None if scope["server"] is None else list(scope["server"]),
        "state_keys": state_keys,
        "extensions": scope.get("extensions"),
        "body": text(body),
    }
    data = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
"#;

/// postern (`--interface asgi`, `--mount /app`) on a Unix socket behind nginx for
/// `upstream`. `None`: no nginx outside CI.
fn stack(upstream: Upstream) -> Option<(Nginx, Postern, tempfile::TempDir)> {
    let bin = nginx_bin()?;
    let dir = tempdir();
    let postern = Spawn::asgi_unix(dir.path(), "scope_app", &source())
        .protocol(upstream.protocol())
        .args(["--lifespan", "on", "--mount", "/app"])
        .start();
    let site = upstream.site(&postern.addr.nginx(), "", "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    Some((nginx, postern, dir))
}

fn scope_of(nginx: &Nginx, r: Response) -> Value {
    assert_eq!(r.status, 200, "{}\nnginx: {}", r.text(), nginx.error_log());
    r.json()
}

/// A header's values in the scope (all of them: the test wants each name once).
fn header<'v>(scope: &'v Value, name: &str) -> Vec<&'v str> {
    scope["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn each_header_once(scope: &Value) {
    let mut names: Vec<&str> = scope["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap())
        .collect();
    for n in &names {
        assert!(
            !n.is_empty() && !n.contains('_') && *n == n.to_ascii_lowercase(),
            "header name {n:?}"
        );
    }
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(all, names.len(), "a header twice: {}", scope["headers"]);
}

/// The fields every request of these tests has in common.
fn common(scope: &Value, nginx: &Nginx) {
    assert_eq!(
        scope["keys"],
        json!([
            "asgi",
            "client",
            "extensions",
            "headers",
            "http_version",
            "method",
            "path",
            "query_string",
            "raw_path",
            "root_path",
            "scheme",
            "server",
            "state",
            "type"
        ])
    );
    assert_eq!(scope["type"], "http");
    assert_eq!(
        scope["asgi"],
        json!({"version": "3.0", "spec_version": "2.4"})
    );
    assert_eq!(scope["scheme"], "http");
    assert_eq!(scope["types"], json!(["bytes", "str"]));
    assert_eq!(scope["server"], json!(["localhost", nginx.port]));
    let client = scope["client"].as_array().expect("client");
    assert_eq!(client[0], "127.0.0.1");
    assert!(client[1].as_u64().is_some_and(|p| p > 0 && p < 65536));
    // The state's copy: what startup stored, never what another request added.
    assert_eq!(scope["state_keys"], json!(["started"]));
    assert_eq!(scope["extensions"], json!({"http.response.pathsend": {}}));
    each_header_once(scope);
}

/// The checks of one upstream: a GET with a non-ASCII path, a query, repeated and
/// custom headers; the same under the mount; a non-UTF-8 path; a POST whose
/// content-type and content-length nginx sends twice; an HTTP/1.0 request.
fn scope_fields_are_byte_exact(upstream: Upstream) {
    let Some((nginx, postern, _dir)) = stack(upstream) else {
        return;
    };

    let get = |target: &str| {
        nginx.request(
            "GET",
            target,
            &[
                ("X-Custom-Thing", "v\u{e9}"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
                ("Accept", "*/*"),
            ],
            b"",
        )
    };

    // Not mounted: root_path "", path decoded (%2F too: nginx's $uri and postern's
    // decoding of REQUEST_URI agree), raw_path and query_string as sent.
    let s = scope_of(&nginx, get("/caf%C3%A9/x%2Fy?q=%C3%A9&a=1+2"));
    common(&s, &nginx);
    assert_eq!(s["method"], "GET");
    assert_eq!(s["http_version"], "1.1");
    assert_eq!(s["root_path"], "");
    assert_eq!(s["path"], "/café/x/y");
    assert_eq!(s["raw_path"], "/caf%C3%A9/x%2Fy");
    assert_eq!(s["query_string"], "q=%C3%A9&a=1+2");
    assert_eq!(header(&s, "host"), ["localhost"]);
    // The header value's UTF-8 bytes, one latin-1 char each.
    assert_eq!(header(&s, "x-custom-thing"), ["v\u{c3}\u{a9}"]);
    assert_eq!(header(&s, "cookie"), ["a=1; b=2"]);
    assert_eq!(header(&s, "accept"), ["*/*"]);
    assert_eq!(header(&s, "connection"), ["close"]);
    // nginx sends CONTENT_TYPE/CONTENT_LENGTH empty on a GET: no header.
    assert!(header(&s, "content-type").is_empty() && header(&s, "content-length").is_empty());
    assert_eq!(s["body"], "");

    // Mounted (--mount /app): root_path is the mount, and stays at the front of path.
    let s = scope_of(&nginx, get("/app/caf%C3%A9?x"));
    common(&s, &nginx);
    assert_eq!(s["root_path"], "/app");
    assert_eq!(s["path"], "/app/café");
    assert_eq!(s["raw_path"], "/app/caf%C3%A9");
    assert_eq!(s["query_string"], "x");
    // The mount itself, and a path that only starts like it.
    let s = scope_of(&nginx, get("/app"));
    assert_eq!(
        (&s["root_path"], &s["path"]),
        (&json!("/app"), &json!("/app"))
    );
    let s = scope_of(&nginx, get("/apple"));
    assert_eq!(
        (&s["root_path"], &s["path"]),
        (&json!(""), &json!("/apple"))
    );

    // Not UTF-8: served, U+FFFD in path, the bytes in raw_path; the worker lives on.
    let s = scope_of(&nginx, get("/app/bad%FF%C3/x"));
    assert_eq!(s["root_path"], "/app");
    assert_eq!(s["path"], "/app/bad\u{fffd}\u{fffd}/x");
    assert_eq!(s["raw_path"], "/app/bad%FF%C3/x");

    // A POST: content-type and content-length once each (nginx also sends them as
    // HTTP_CONTENT_TYPE/HTTP_CONTENT_LENGTH over uwsgi and FastCGI).
    let r = nginx.request(
        "POST",
        "/form?z",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    let s = scope_of(&nginx, r);
    common(&s, &nginx);
    assert_eq!(s["method"], "POST");
    assert_eq!(header(&s, "content-type"), ["application/json"]);
    assert_eq!(header(&s, "content-length"), ["2"]);
    assert_eq!(s["body"], "{}");

    // HTTP/1.0 from the client: http_version "1.0".
    let raw = nginx.raw(b"GET /v?1 HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let r = parse_http(&raw).expect("a response");
    let s = scope_of(&nginx, r);
    assert_eq!(s["http_version"], "1.0");
    assert_eq!(s["raw_path"], "/v");

    // regression: a query sent with raw UTF-8 bytes (curl 'http://host/s?q=é') reached
    // the app unencoded, and FastAPI decoded it as latin-1 ("Ã©"); ASGI's query_string
    // is percent-encoded. The path's raw bytes stay in raw_path.
    let raw = nginx.raw("GET /s?q=\u{e9}&x=%41 HTTP/1.0\r\nHost: localhost\r\n\r\n".as_bytes());
    let s = scope_of(&nginx, parse_http(&raw).expect("a response"));
    assert_eq!(s["query_string"], "q=%C3%A9&x=%41");

    assert!(
        postern.logs().contains("ASGI"),
        "not served as ASGI: {}",
        postern.logs()
    );
}

#[test]
fn uwsgi_pass_scope_fields_are_byte_exact() {
    scope_fields_are_byte_exact(Upstream::Uwsgi);
}

#[test]
fn fastcgi_pass_scope_fields_are_byte_exact() {
    scope_fields_are_byte_exact(Upstream::FastCgi);
}

#[test]
fn fastcgi_keep_conn_scope_fields_are_byte_exact() {
    scope_fields_are_byte_exact(Upstream::FastCgiKeepConn);
}

#[test]
fn scgi_pass_scope_fields_are_byte_exact() {
    scope_fields_are_byte_exact(Upstream::Scgi);
}

/// Through Apache at the prefix `/app` (deploy/apache's `file`): Apache sends
/// SCRIPT_NAME `/app` and the rest as PATH_INFO, so `root_path` is `/app` without
/// `--mount`; the other fields as through nginx.
fn apache_scope_fields_are_byte_exact(proto: Proto, file: &str) {
    let Some(bin) = apache_bin() else {
        return;
    };
    let dir = tempdir();
    let app = dir.path().join("scope_app.py");
    std::fs::write(&app, source()).unwrap();
    let postern = start_postern(
        dir.path(),
        proto,
        app.to_str().unwrap(),
        &["--interface", "asgi", "--lifespan", "on"],
        None,
    );
    let Addr::Unix(sock) = &postern.addr else {
        unreachable!("start_postern listens on a Unix socket")
    };
    let site = deploy_conf(
        file,
        &[("SOCKET", &sock.display().to_string()), ("PREFIX", "/app")],
    );
    let apache = Apache::start(&bin, dir.path(), &site);
    let scope = |r: Response| {
        assert_eq!(
            r.status,
            200,
            "{}\n{}\n{}",
            r.text(),
            postern.logs(),
            apache.error_log()
        );
        r.json()
    };

    let s = scope(apache.request(
        "GET",
        "/app/caf%C3%A9/x?q=%C3%A9",
        &[("X-Custom-Thing", "v"), ("Cookie", "a=1; b=2")],
        b"",
    ));
    eprintln!("{proto:?} scope: {s}");
    assert_eq!(s["type"], "http");
    assert_eq!(s["asgi"], json!({"version": "3.0", "spec_version": "2.4"}));
    assert_eq!(s["http_version"], "1.1");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["scheme"], "http");
    assert_eq!(s["root_path"], "/app");
    assert_eq!(s["path"], "/app/café/x");
    assert_eq!(s["raw_path"], "/app/caf%C3%A9/x");
    assert_eq!(s["query_string"], "q=%C3%A9");
    assert_eq!(header(&s, "host"), [apache.host()]);
    assert_eq!(header(&s, "x-custom-thing"), ["v"]);
    assert_eq!(header(&s, "cookie"), ["a=1; b=2"]);
    assert!(header(&s, "content-type").is_empty() && header(&s, "content-length").is_empty());
    each_header_once(&s);
    let client = s["client"].as_array().expect("client");
    assert_eq!(client[0], "127.0.0.1");
    assert!(client[1].as_u64().is_some_and(|p| p > 0 && p < 65536));
    assert_eq!(s["server"][1], apache.port);
    assert_eq!(s["state_keys"], json!(["started"]));
    assert_eq!(s["extensions"], json!({"http.response.pathsend": {}}));

    // Not UTF-8: served, U+FFFD in path, raw_path exact.
    let s = scope(apache.get("/app/bad%FF"));
    assert_eq!(s["root_path"], "/app");
    assert_eq!(s["path"], "/app/bad\u{fffd}");
    assert_eq!(s["raw_path"], "/app/bad%FF");

    // A POST: content-type and content-length once each.
    let s = scope(apache.request(
        "POST",
        "/app/form",
        &[("Content-Type", "application/json")],
        b"{}",
    ));
    assert_eq!(header(&s, "content-type"), ["application/json"]);
    assert_eq!(header(&s, "content-length"), ["2"]);
    assert_eq!(s["body"], "{}");
    each_header_once(&s);
}

#[test]
fn apache_proxy_fcgi_scope_fields_are_byte_exact() {
    apache_scope_fields_are_byte_exact(Proto::FastCgi, "postern-fcgi.conf");
}

#[test]
fn apache_proxy_uwsgi_scope_fields_are_byte_exact() {
    apache_scope_fields_are_byte_exact(Proto::Uwsgi, "postern-uwsgi.conf");
}
