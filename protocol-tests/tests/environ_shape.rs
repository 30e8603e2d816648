//! A Python thread copies the environ of the last request when the next one has the
//! same variable names (a front server's params file): the copy must give the app
//! exactly the environ a build from scratch gives, whatever changed in the values.

use protocol_tests::harness::*;

/// Every entry in order, values by `repr` (objects by type): the order is part of it.
const APP: &str = r#"
def application(environ, start_response):
    out = []
    for k, v in environ.items():
        if k == "postern.request_id":
            v = type(v).__name__
        elif not isinstance(v, (str, bool, tuple)):
            v = type(v).__name__
        out.append("%s=%r" % (k, v))
    out.append("input=%r" % environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["\n".join(out).encode("latin-1")]
"#;

type Vars = Vec<(&'static str, String)>;

fn request(host: &str, uri: &str, extra: &[(&'static str, &str)]) -> Vars {
    let mut v: Vars = vec![
        ("QUERY_STRING", "q=1".into()),
        ("REQUEST_METHOD", "GET".into()),
        ("CONTENT_TYPE", String::new()),
        ("CONTENT_LENGTH", String::new()),
        ("REQUEST_URI", uri.into()),
        ("PATH_INFO", uri.into()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
        ("SERVER_NAME", "example".into()),
        ("HTTP_HOST", host.into()),
    ];
    v.extend(extra.iter().map(|(k, x)| (*k, (*x).to_owned())));
    v
}

fn body(p: &Postern, vars: &Vars, body: &[u8]) -> String {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = parse_http(&p.uwsgi(&vars, body)).expect("an HTTP response");
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn an_environ_copied_from_the_last_request_equals_one_built_from_scratch() {
    let dir = tempdir();
    let app = dir.path().join("shape_app.py");
    std::fs::write(&app, APP).unwrap();
    // One Python thread: every request below meets what the one before left.
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .args(["--workers", "1", "--threads", "1"])
        .start();
    let other = request("other", "/other", &[("HTTP_X_OTHER", "1")]);
    let base = request("a.example", "/a", &[("HTTP_X_CUSTOM", "v1")]);
    let cases: Vec<(Vars, &[u8])> = vec![
        (base.clone(), b""),
        // Values change under the same names: a known one, an unknown one, one that
        // becomes a shared common value, and a body.
        (request("b.example", "/b", &[("HTTP_X_CUSTOM", "v2")]), b""),
        (request("a.example", "/", &[("HTTP_X_CUSTOM", "")]), b""),
        (
            request(
                "a.example",
                "/a",
                &[("HTTP_X_CUSTOM", "v1"), ("HTTP_X_MORE", "m")],
            ),
            b"",
        ),
        (
            request(
                "a.example",
                "/a",
                &[("HTTP_X_CUSTOM", "v1"), ("HTTPS", "on")],
            ),
            b"",
        ),
    ];
    for (i, (vars, input)) in cases.iter().enumerate() {
        // From scratch: the request before it had other names.
        body(&p, &other, b"");
        let fresh = body(&p, vars, input);
        // Copied: two requests with the same names (another Host) come first; then
        // the same request again (every value as in the copy).
        let mut same_names = vars.clone();
        same_names[9].1 = "z.example".into();
        body(&p, &same_names, b"");
        body(&p, &same_names, b"");
        let copied = body(&p, vars, input);
        let again = body(&p, vars, input);
        assert_eq!(again, fresh, "case {i}, again");
        assert_eq!(copied, fresh, "case {i}");
        for (k, v) in vars.iter().filter(|(_, v)| !v.is_empty()) {
            if !k.starts_with("CONTENT_") && *k != "HTTPS" {
                assert!(
                    fresh.contains(&format!("{k}='{v}'")),
                    "case {i}: {k}\n{fresh}"
                );
            }
        }
    }
    // A POST after the copies: its input is its own, the next GET's is empty again.
    let mut post = base.clone();
    post[1].1 = "POST".into();
    post[3].1 = "4".into();
    assert!(body(&p, &post, b"data").ends_with("input=b'data'"));
    assert!(body(&p, &base, b"").ends_with("input=b''"));
}
