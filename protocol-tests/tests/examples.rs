//! The Flask and Django examples, unmodified, through a real nginx: form POST (with
//! Django's CSRF), multipart upload, redirect, cookies, and static files served by nginx.
//! Needs nginx and a venv with Flask and Django (`.ci/run` makes `.venv`).

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

fn multipart(field: &str, filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "postern-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
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

#[test]
fn flask_example_end_to_end() {
    let Some(bin) = nginx_bin() else { return };
    let Some(venv) = venv() else { return };
    let dir = tempdir();
    let p = Spawn::unix(
        dir.path(),
        &root().join("examples/flask_app.py:app").to_string_lossy(),
    )
    .venv(&venv)
    .start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));

    assert_eq!(n.get("/").text(), "Hello from Flask\n");
    assert!(n.get("/form").text().contains("name=\"name\""));
    let r = n.request(
        "POST",
        "/form",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=World",
    );
    assert_eq!(r.text(), "Hello, World!\n");

    let data = upload_data();
    let (ctype, body) = multipart("file", "blob.bin", &data);
    let r = n.request("POST", "/upload", &[("Content-Type", &ctype)], &body);
    assert_eq!(r.status, 200, "{}", p.logs());
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(j["filename"], "blob.bin");
    assert_eq!(j["sha256"], sha256_hex(&data));

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
fn django_example_end_to_end() {
    let Some(bin) = nginx_bin() else { return };
    let Some(venv) = venv() else { return };
    let dir = tempdir();
    let project = root().join("examples/django_project");
    let p = Spawn::unix(dir.path(), "mysite.wsgi:application")
        .arg("--chdir")
        .arg(project.to_string_lossy())
        .venv(&venv)
        .start();
    let body = format!(
        "location /static/ {{ alias {}/static/; }}\n{}",
        project.display(),
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
    let (ctype, body) = multipart("file", "big.bin", &data);
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
    assert!(r.text().contains("postern-static-ok"));
    assert!(
        !p.logs().contains("/static/style.css"),
        "static files are nginx's job"
    );
}
