//! What the environ shares between requests on one Python thread (values that repeat,
//! the empty `wsgi.input`, `wsgi.errors` without forwarding) never leaks from one
//! request into the next.

use protocol_tests::harness::*;

const APP: &str = r#"
def application(environ, start_response):
    if environ["PATH_INFO"] == "/partial":
        environ["wsgi.errors"].write("partial-line-" + environ["QUERY_STRING"])
    body = repr((environ.get("HTTP_X_VAL"), environ["wsgi.input"].read())).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"#;

fn start(dir: &std::path::Path) -> Postern {
    let app = dir.join("reuse_app.py");
    std::fs::write(&app, APP).unwrap();
    Spawn::tcp(dir, app.to_str().unwrap()).start()
}

fn body(resp: &[u8]) -> String {
    let r = parse_http(resp).expect("an HTTP response");
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn a_changed_value_and_a_body_are_never_taken_from_the_previous_request() {
    let dir = tempdir();
    let p = start(dir.path());
    let get = |val: &str| {
        body(&p.uwsgi(
            &[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/"),
                ("HTTP_X_VAL", val),
            ],
            b"",
        ))
    };
    assert_eq!(get("a"), "('a', b'')");
    assert_eq!(get("b"), "('b', b'')");
    assert_eq!(get("a"), "('a', b'')");
    let post = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/"),
            ("CONTENT_LENGTH", "4"),
        ],
        b"data",
    );
    assert_eq!(body(&post), "(None, b'data')");
    assert_eq!(
        get("a"),
        "('a', b'')",
        "the next request's input is empty again"
    );
}

#[test]
fn an_unfinished_wsgi_errors_line_is_logged_with_its_own_request() {
    let dir = tempdir();
    let p = start(dir.path());
    for q in ["one", "two"] {
        let resp = p.uwsgi(
            &[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/partial"),
                ("QUERY_STRING", q),
            ],
            b"",
        );
        assert_eq!(parse_http(&resp).map(|r| r.status), Some(200));
    }
    assert!(p.wait_log("partial-line-two", 5), "{}", p.logs());
    let logs = p.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("partial-line-"))
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    assert!(
        lines[0].contains("partial-line-one") && !lines[0].contains("two"),
        "{logs}"
    );
    assert!(
        lines[1].contains("partial-line-two") && !lines[1].contains("one"),
        "{logs}"
    );
}
