//! The examples, unmodified, through a real nginx: Flask (form POST, JSON API, upload
//! form), Django (CSRF form, upload, redirect, cookies, and `collectstatic` output
//! served by nginx itself) and the request-logging WSGI middleware. Flask and Django
//! need a venv with both (`.ci/run` makes `.venv`).

use std::path::Path;

use protocol_tests::harness::*;

fn venv() -> Option<std::path::PathBuf> {
    if let Some(v) = example_venv() {
        return Some(v);
    }
    if in_ci() {
        panic!("no venv with Flask and Django (.venv or $POSTERN_TEST_VENV), and CI=true");
    }
    eprintln!("\n!!!!! SKIPPING: no venv with Flask and Django (python3 -m venv .venv && .venv/bin/pip install flask django) !!!!!\n");
    None
}

/// A multipart/form-data body: text `fields`, then one file field; returns
/// (Content-Type, body).
fn multipart(fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "postern-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    let (field, filename, data) = file;
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn sha256_hex(data: &[u8]) -> String {
    // Let Python compute the reference digest (no crypto crate needed here).
    let dir = tempdir();
    let f = dir.path().join("data");
    std::fs::write(&f, data).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(&f)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn upload_data() -> Vec<u8> {
    (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(31) % 256) as u8)
        .collect()
}

/// The Flask example (with `args`) behind a private nginx, over a Unix socket.
fn flask_behind_nginx(dir: &Path, args: &[&str]) -> Option<(Postern, Nginx)> {
    let bin = nginx_bin()?;
    let venv = venv()?;
    let p = Spawn::unix(
        dir,
        &root().join("examples/flask_app.py:app").to_string_lossy(),
    )
    .args(args.iter().copied())
    .venv(&venv)
    .start();
    let n = Nginx::start(&bin, dir, &uwsgi_location(&p.addr.nginx()));
    Some((p, n))
}

#[test]
fn flask_example_end_to_end() {
    let dir = tempdir();
    let Some((p, n)) = flask_behind_nginx(dir.path(), &[]) else {
        return;
    };

    assert_eq!(n.get("/").text(), "Hello from Flask\n");
    assert!(n.get("/form").text().contains("name=\"name\""));
    let r = n.request(
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=World",
    );
    assert_eq!(r.text(), "Hello, World!\n");

    // The upload form, then what a browser sends for it: a text field and a file
    // (larger than --body-spool-threshold, so postern spools it to a temporary file),
    // with a UTF-8 file name.
    let form = n.get("/upload").text();
    assert!(
        form.contains("enctype=\"multipart/form-data\"") && form.contains("name=\"file\""),
        "{form}"
    );
    let data = upload_data();
    let (ctype, body) = multipart(
        &[("description", "holiday photos")],
        ("file", "résumé.bin", &data),
    );
    let r = n.request("POST", "/upload", &[("Content-Type", &ctype)], &body);
    assert_eq!(r.status, 200, "{}", p.logs());
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(j["filename"], "résumé.bin");
    assert_eq!(j["description"], "holiday photos");
    assert_eq!(j["sha256"], sha256_hex(&data));
    let r = n.request(
        "POST",
        "/upload",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"description=no+file",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "multipart field 'file' is required");

    let r = n.get("/redirect");
    assert_eq!(r.status, 302);
    assert!(r.header("Location").unwrap().ends_with("/target"));
    assert_eq!(n.get("/target").text(), "You were redirected\n");

    let r = n.get("/set-cookie");
    let cookies = r.all("Set-Cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies[0].starts_with("a=1") && cookies[1].starts_with("b=2"));
    let r = n.request("GET", "/get-cookie", &[("Cookie", "a=1; b=2")], b"");
    assert_eq!(r.json(), serde_json::json!({"a": "1", "b": "2"}));

    assert_eq!(
        n.get("/stream").text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    assert!(!p.logs().contains("ERROR"), "{}", p.logs());
}

#[test]
fn flask_json_api_end_to_end() {
    let dir = tempdir();
    // Four Python threads: the concurrent POSTs below really run at once.
    let Some((p, n)) = flask_behind_nginx(dir.path(), &["--threads", "4"]) else {
        return;
    };
    let json = [("Content-Type", "application/json")];

    let r = n.get("/api/items");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({"items": []}));

    // Non-ASCII text goes through as UTF-8 both ways.
    let r = n.request(
        "POST",
        "/api/items",
        &json,
        r#"{"name": "Crème brûlée", "price": 4.5}"#.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}\n{}", r.text(), p.logs());
    assert_eq!(r.header("Location"), Some("/api/items/1"));
    let first = serde_json::json!({"id": 1, "name": "Crème brûlée", "price": 4.5});
    assert_eq!(r.json(), first);
    assert_eq!(n.get("/api/items/1").json(), first);

    let r = n.get("/api/items/99");
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), serde_json::json!({"error": "no item 99"}));
    let r = n.request("POST", "/api/items", &json, br#"{"name": "#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "the body must be a JSON object");
    let r = n.request(
        "POST",
        "/api/items",
        &json,
        br#"{"name": "Tea", "price": "2"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "'price' must be a number");
    let r = n.request(
        "POST",
        "/api/items",
        &[("Content-Type", "text/plain")],
        b"name=Tea",
    );
    assert_eq!(r.status, 415);
    assert!(r.json()["error"].as_str().unwrap().contains("JSON"));
    // Flask's own errors under /api/ are JSON too, headers kept.
    let r = n.request("PUT", "/api/items", &json, b"{}");
    assert_eq!(r.status, 405);
    assert!(
        r.header("Allow").unwrap().contains("POST"),
        "{:?}",
        r.headers
    );
    assert!(r.json()["error"].is_string());

    // 4 clients x 10 POSTs at once: every item is stored once, with its own id.
    std::thread::scope(|s| {
        for t in 0..4 {
            let n = &n;
            s.spawn(move || {
                for i in 0..10 {
                    let body = format!(r#"{{"name": "item {t}-{i}", "price": {i}}}"#);
                    let r = n.request("POST", "/api/items", &json, body.as_bytes());
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            });
        }
    });
    let items = n.get("/api/items").json()["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 41);
    let ids: Vec<u64> = items.iter().map(|i| i["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=41).collect::<Vec<_>>());
    let mut names: Vec<&str> = items[1..]
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|t| (0..10).map(move |i| format!("item {t}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(!p.logs().contains("ERROR"), "{}", p.logs());
}

#[test]
fn django_example_end_to_end() {
    let Some(bin) = nginx_bin() else { return };
    let Some(venv) = venv() else { return };
    let dir = tempdir();
    let project = root().join("examples/django_project");

    // The deploy step: collectstatic copies the static files into STATIC_ROOT, and
    // nginx serves that directory itself.
    let static_root = dir.path().join("static-root");
    let out = std::process::Command::new(venv.join("bin/python"))
        .args(["manage.py", "collectstatic", "--noinput"])
        .current_dir(&project)
        .env("DJANGO_STATIC_ROOT", &static_root)
        .output()
        .expect("running manage.py collectstatic");
    assert!(
        out.status.success(),
        "collectstatic failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source_css = std::fs::read(project.join("static/style.css")).unwrap();
    assert_eq!(
        std::fs::read(static_root.join("style.css")).unwrap(),
        source_css
    );

    let p = Spawn::unix(dir.path(), "mysite.wsgi:application")
        .arg("--chdir")
        .arg(project.to_string_lossy())
        .venv(&venv)
        .start();
    let body = format!(
        "location /static/ {{ alias {}/; types {{ text/css css; }} }}\n{}",
        static_root.display(),
        uwsgi_location(&p.addr.nginx())
    );
    let n = Nginx::start(&bin, dir.path(), &body);

    assert_eq!(n.get("/").text(), "Hello from Django\n");

    // Form with CSRF: fetch the token, post it back with its cookie.
    let r = n.get("/form/");
    assert_eq!(r.status, 200);
    let cookie = r
        .all("Set-Cookie")
        .into_iter()
        .find(|c| c.starts_with("csrftoken="))
        .expect("csrftoken cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = r.text();
    // The page links the stylesheet where nginx serves it (STATIC_URL).
    assert!(page.contains("href=\"/static/style.css\""), "{page}");
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token in the form");
    let form = format!("csrfmiddlewaretoken={token}&name=World");
    let r = n.request(
        "POST",
        "/form/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    assert_eq!(r.text(), "Hello, World!\n");
    let r = n.request(
        "POST",
        "/form/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=NoToken",
    );
    assert_eq!(r.status, 403, "CSRF is enforced");

    let data = upload_data();
    let (ctype, body) = multipart(&[], ("file", "big.bin", &data));
    let r = n.request("POST", "/upload/", &[("Content-Type", &ctype)], &body);
    assert_eq!(r.status, 200, "{}", p.logs());
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(j["sha256"], sha256_hex(&data));

    let r = n.get("/redirect/");
    assert_eq!(r.status, 302);
    assert!(r.header("Location").unwrap().ends_with("/form/"));

    let r = n.get("/cookie/set/");
    let cookies = r.all("Set-Cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let r = n.request("GET", "/cookie/get/", &[("Cookie", "a=1; b=2")], b"");
    assert_eq!(r.json(), serde_json::json!({"a": "1", "b": "2"}));

    let r = n.get("/static/style.css");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/css"));
    assert_eq!(r.body, source_css);
    // A missing static file is nginx's 404, not Django's.
    assert_eq!(n.get("/static/missing.css").status, 404);
    assert!(
        !p.logs().contains("/static/"),
        "static files are nginx's job:\n{}",
        p.logs()
    );
}

#[test]
fn plain_wsgi_examples_through_nginx() {
    let Some(bin) = nginx_bin() else { return };
    let dir = tempdir();
    let examples = root().join("examples");

    let p = Spawn::unix(dir.path(), &examples.join("hello.py").to_string_lossy()).start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));
    let r = n.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, World!\n"));
    assert_eq!(r.header("Content-Length"), Some("14"));
    drop(n);
    drop(p);

    // No Content-Length: nginx chunks it to the client, and takes the
    // X-Accel-Buffering header for itself.
    let p = Spawn::unix(dir.path(), &examples.join("streaming.py").to_string_lossy()).start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));
    let r = n.get("/?n=3&delay=0");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    assert_eq!(r.header("X-Accel-Buffering"), None);
    assert_eq!(n.get("/?n=0").text(), "");
}

/// The request-logging middleware's line for `request` (e.g. `GET /x HTTP/1.1`), with
/// the date and the duration checked and cut off: what follows the date.
fn middleware_line(p: &Postern, request: &str) -> String {
    let needle = format!("\"{request}\"");
    // The line is written when postern closes the iterable, after the response.
    assert!(
        p.wait_log(&needle, 10),
        "no line for {request}:\n{}",
        p.logs()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap()
        .to_owned();
    // 127.0.0.1 - - [29/Nov/2026:17:40:02 +0000] "GET / HTTP/1.1" 200 14 "-" "-" 0.4ms
    let rest = line
        .strip_prefix("127.0.0.1 - - [")
        .unwrap_or_else(|| panic!("{line}"));
    let (date, rest) = rest.split_once("] ").unwrap_or_else(|| panic!("{line}"));
    assert_eq!(date.len(), "29/Nov/2026:17:40:02 +0000".len(), "{line}");
    let (rest, ms) = match rest.split_once(" (failed: ") {
        Some((head, failed)) => {
            let (head, ms) = head.rsplit_once(' ').unwrap();
            (format!("{head} (failed: {failed}"), ms)
        }
        None => {
            let (head, ms) = rest.rsplit_once(' ').unwrap();
            (head.to_owned(), ms)
        }
    };
    let ms: f64 = ms
        .strip_suffix("ms")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms >= 0.0, "{line}");
    rest
}

#[test]
fn middleware_example_logs_each_request() {
    let Some(bin) = nginx_bin() else { return };
    let dir = tempdir();
    let examples = root().join("examples");

    // The example as shipped: its demo app, wrapped. postern's own access log is off,
    // so every request line in the log is the middleware's.
    let p = Spawn::unix(
        dir.path(),
        &examples.join("middleware.py").to_string_lossy(),
    )
    .args(["--access-log", "off"])
    .start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));
    let r = n.request(
        "GET",
        "/hello",
        &[
            ("User-Agent", "postern-test/1.0"),
            ("Referer", "http://example.test/from"),
        ],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, World!\n"));
    assert_eq!(
        middleware_line(&p, "GET /hello HTTP/1.1"),
        r#""GET /hello HTTP/1.1" 200 14 "http://example.test/from" "postern-test/1.0""#
    );
    assert_eq!(n.get("/nope?x=1").status, 404);
    assert_eq!(
        middleware_line(&p, "GET /nope?x=1 HTTP/1.1"),
        r#""GET /nope?x=1 HTTP/1.1" 404 10 "-" "-""#
    );
    drop(n);
    drop(p);

    // Wrapping another app, as the README shows, with wsgiref's validator outside the
    // middleware: it checks the middleware keeps PEP 3333 towards the server (its
    // iterable, close(), start_response and write) on every route below.
    std::fs::write(
        dir.path().join("wrapped.py"),
        "from wsgiref.validate import validator\n\
         from middleware import RequestLogger\n\
         import testapp\n\
         application = validator(RequestLogger(testapp.application))\n",
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), "wrapped")
        .args(["--access-log", "off"])
        .args(["--pythonpath", &examples.to_string_lossy()])
        .args([
            "--pythonpath",
            &root().join("protocol-tests/apps").to_string_lossy(),
        ])
        .args(["--pythonpath", &dir.path().to_string_lossy()])
        .start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));

    // Streamed body and the write() callable: the bytes are counted either way.
    let r = n.get("/stream?n=3&delay=0");
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");
    assert_eq!(
        middleware_line(&p, "GET /stream?n=3&delay=0 HTTP/1.1"),
        r#""GET /stream?n=3&delay=0 HTTP/1.1" 200 24 "-" "-""#
    );
    let r = n.get("/write");
    assert_eq!(r.text(), "written 1\nwritten 2\nreturned\n");
    assert_eq!(
        middleware_line(&p, "GET /write HTTP/1.1"),
        r#""GET /write HTTP/1.1" 200 29 "-" "-""#
    );
    // The app's iterable's close() still runs through the middleware.
    assert_eq!(n.get("/close?id=mw").text(), "a\nb\n");
    middleware_line(&p, "GET /close?id=mw HTTP/1.1");
    assert_eq!(n.get("/closed?id=mw").text(), "closed");

    // Exceptions are logged and passed on: postern still answers 500.
    assert_eq!(n.get("/error").status, 500);
    assert_eq!(
        middleware_line(&p, "GET /error HTTP/1.1"),
        r#""GET /error HTTP/1.1" 500 - "-" "-" (failed: ValueError: boom: an app error on purpose)"#
    );
    assert_eq!(n.get("/late-error").status, 500);
    assert_eq!(
        middleware_line(&p, "GET /late-error HTTP/1.1"),
        r#""GET /late-error HTTP/1.1" 500 - "-" "-" (failed: RuntimeError: error before the first body byte)"#
    );
    let logs = p.logs();
    for bad in ["AssertionError", "WSGIWarning", "garbage collected"] {
        assert!(
            !logs.contains(bad),
            "the validator objected ({bad}):\n{logs}"
        );
    }
}
