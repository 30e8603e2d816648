//! Through a real, private Apache httpd 2.4 (mod_proxy_fcgi and mod_proxy_uwsgi), with
//! the configs shipped in deploy/apache/ (read from disk, placeholders filled in):
//! SCRIPT_NAME/PATH_INFO with `proxy-fcgi-pathinfo` and with postern's `--mount`,
//! Authorization and `CGIPassAuth`, request bodies (sized and chunked), FastCGI
//! connection reuse (`enablereuse=on`), and the Flask and Django examples.
//! Needs Apache with the proxy modules (fails in CI if missing, skips loudly locally);
//! the Flask/Django tests also need the example venv.
//!
//! Every test prints the variables Apache sent (`--nocapture` to see them).

use std::time::Duration;

use protocol_tests::apache::*;
use protocol_tests::harness::*;
use protocol_tests::stack::Load;
use serde_json::Value;

const PREFIX: &str = "/app";
const SETENVIF: &str = "    SetEnvIf Request_URI \".\" proxy-fcgi-pathinfo=unescape\n";
const CGIPASSAUTH: &str = "    CGIPassAuth On\n";
const REUSE: &str = "|fcgi://postern/\" enablereuse=on\n";
const BASIC: &str = "Basic dXNlcjpwYXNzd29yZA==";

struct Stack {
    apache: Apache,
    postern: Postern,
    _dir: tempfile::TempDir,
}

fn socket(p: &Postern) -> String {
    match &p.addr {
        Addr::Unix(s) => s.display().to_string(),
        Addr::Tcp(_) => unreachable!("Apache tests use Unix sockets"),
    }
}

/// postern (`proto`, `app`, `args`) behind an Apache running `file` from deploy/apache
/// with @SOCKET@ and @PREFIX@ filled in, then changed by `edit_site`.
fn stack(
    proto: Proto,
    file: &str,
    prefix: &str,
    app: &str,
    args: &[&str],
    venv: Option<&std::path::Path>,
    edit_site: impl FnOnce(String) -> String,
) -> Option<Stack> {
    let bin = apache_bin()?;
    let dir = tempdir();
    let postern = start_postern(dir.path(), proto, app, args, venv);
    let site = deploy_conf(file, &[("SOCKET", &socket(&postern)), ("PREFIX", prefix)]);
    let apache = Apache::start(&bin, dir.path(), &edit_site(site));
    Some(Stack {
        apache,
        postern,
        _dir: dir,
    })
}

fn fcgi(prefix: &str, args: &[&str], edit_site: impl FnOnce(String) -> String) -> Option<Stack> {
    stack(
        Proto::FastCgi,
        "postern-fcgi.conf",
        prefix,
        &testapp(),
        args,
        None,
        edit_site,
    )
}

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

impl Stack {
    fn env(&self, target: &str, headers: &[(&str, &str)]) -> Value {
        let r = self.apache.request("GET", target, headers, b"");
        assert_eq!(
            r.status,
            200,
            "GET {target}: {}\n{}",
            r.text(),
            self.postern.logs()
        );
        r.json()
    }

    /// No protocol errors on either side (apart from the expected `wsgi.errors` copy).
    fn assert_clean_logs(&self) {
        let errors: Vec<String> = self
            .apache
            .error_log()
            .lines()
            .filter(|l| {
                (l.contains(":error]") || l.contains(":crit]") || l.contains(":emerg]"))
                    && !l.contains("hello-from-wsgi-errors")
            })
            .map(str::to_owned)
            .collect();
        assert!(
            errors.is_empty(),
            "Apache logged errors:\n{}",
            errors.join("\n")
        );
        let logs = self.postern.logs();
        assert!(
            !logs.contains("ERROR") && !logs.contains("panicked"),
            "postern logged errors:\n{logs}"
        );
    }

    /// Prints the params mod_proxy_fcgi sent for the last request.
    fn show_fcgi_params(&self, what: &str) {
        let all = self.apache.fcgi_params_sent();
        let Some(last) = all.last() else {
            eprintln!("[{what}] no FastCGI params in Apache's trace log");
            return;
        };
        eprintln!("[{what}] mod_proxy_fcgi sent {} params:", last.len());
        for (k, v) in last {
            eprintln!("    {k} = {v:?}");
        }
    }

    fn last_fcgi_param(&self, key: &str) -> Option<String> {
        self.apache
            .fcgi_params_sent()
            .last()
            .and_then(|r| r.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }
}

/// The CGI part of an /env answer, for the test output.
fn show_env(what: &str, env: &Value) {
    let mut keys: Vec<(&String, &Value)> = env
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("wsgi.") && !k.starts_with('_'))
        .collect();
    keys.sort_by_key(|(k, _)| k.as_str());
    eprintln!("[{what}] environ the app saw:");
    for (k, v) in keys {
        eprintln!("    {k} = {v}");
    }
}

fn body_of(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
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

fn multipart(field: &str, filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "postern-apache-boundary-q8Jd2KxZ";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn assert_echo(s: &Stack, target: &str, data: &[u8]) {
    let r = s.apache.request(
        "POST",
        target,
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(
        r.status,
        200,
        "POST {target}: {}\n{}",
        r.text(),
        s.postern.logs()
    );
    assert_eq!(
        r.header("X-Body-Len"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(r.body.len(), data.len(), "echoed length");
    assert!(r.body == data, "echoed body differs");
}

/// How Apache frames a response whose app set Content-Length (/env does).
fn show_framing(s: &Stack, what: &str) {
    let r = s.apache.get("/app/env");
    eprintln!(
        "[{what}] app sent Content-Length; Apache answered with Content-Length {:?}, Transfer-Encoding {:?}",
        r.header("Content-Length"),
        r.header("Transfer-Encoding")
    );
}

// ---------------------------------------------------------------------------
// 1. FastCGI, mounted at /app with the recommended recipe (proxy-fcgi-pathinfo).

#[test]
fn fastcgi_prefix_mount_with_pathinfo_recipe() {
    let Some(s) = fcgi(PREFIX, &["--threads", "4"], |c| c) else {
        return;
    };

    let env = s.env("/app/env?x=1", &[("Authorization", BASIC)]);
    show_env("fcgi /app/env?x=1", &env);
    s.show_fcgi_params("fcgi /app/env?x=1");
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["QUERY_STRING"], "x=1");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["REQUEST_URI"], "/app/env?x=1");
    assert_eq!(env["SERVER_PORT"], s.apache.port.to_string());
    assert_eq!(env["HTTP_HOST"], s.apache.host());
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(
        env["HTTP_AUTHORIZATION"], BASIC,
        "CGIPassAuth On passes Authorization on"
    );
    assert_eq!(env["_types_ok"], true);
    assert_eq!(
        s.last_fcgi_param("PATH_INFO").as_deref(),
        Some("/env"),
        "Apache itself sends PATH_INFO with proxy-fcgi-pathinfo"
    );

    // Percent-encoded segments arrive decoded in PATH_INFO (UTF-8 bytes as latin-1
    // code points, PEP 3333); REQUEST_URI keeps the raw form.
    let env = s.env("/app/env/a%20b/%C3%A9t%C3%A9", &[]);
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env/a b/\u{c3}\u{a9}t\u{c3}\u{a9}");
    assert_eq!(env["REQUEST_URI"], "/app/env/a%20b/%C3%A9t%C3%A9");
    assert_eq!(env["QUERY_STRING"], "");
    s.show_fcgi_params("fcgi /app/env/a%20b/%C3%A9t%C3%A9");

    // A trailing slash stays in PATH_INFO; the bare prefix is redirected.
    let env = s.env("/app/env/", &[]);
    assert_eq!(
        (env["SCRIPT_NAME"].as_str(), env["PATH_INFO"].as_str()),
        (Some("/app"), Some("/env/"))
    );
    let r = s.apache.get("/app");
    assert_eq!(r.status, 301);
    assert!(
        r.header("Location").is_some_and(|l| l.ends_with("/app/")),
        "{:?}",
        r.headers
    );
    let r = s.apache.get("/app/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));

    // A 100 KB body, byte for byte.
    assert_echo(&s, "/app/echo", &body_of(100 * 1024, 1));
    show_framing(&s, "fcgi");
    let env: Value = s
        .apache
        .request(
            "POST",
            "/app/env",
            &[("Content-Type", "text/plain")],
            b"abc",
        )
        .json();
    assert_eq!(env["CONTENT_LENGTH"], "3");
    assert_eq!(env["CONTENT_TYPE"], "text/plain");

    // wsgi.errors: in postern's log, and copied to Apache's error log (FCGI_STDERR).
    let r = s.apache.get("/app/errors");
    assert_eq!((r.status, r.text().as_str()), (200, "logged\n"));
    assert!(s.postern.wait_log("hello-from-wsgi-errors", 5));
    let apache_log = s.apache.error_log();
    let line = apache_log
        .lines()
        .find(|l| l.contains("hello-from-wsgi-errors"));
    eprintln!("wsgi.errors in Apache's error log: {line:?}");
    let apache_saw = line.is_some();
    assert!(
        apache_saw,
        "FCGI_STDERR should reach Apache's error log:\n{}",
        tail(&s.apache.error_log(), 20)
    );

    s.assert_clean_logs();
}

// ---------------------------------------------------------------------------
// 2. FastCGI without proxy-fcgi-pathinfo: postern's --mount does the split. Also
//    without CGIPassAuth and enablereuse: the minimal config.

#[test]
fn fastcgi_mount_option_without_pathinfo_env() {
    let Some(s) = fcgi(PREFIX, &["--mount", "/app"], |c| {
        let c = edit(&c, SETENVIF, "");
        let c = edit(&c, CGIPASSAUTH, "");
        edit(&c, REUSE, "|fcgi://postern/\"\n")
    }) else {
        return;
    };

    let env = s.env("/app/env?x=1", &[("Authorization", BASIC)]);
    show_env("fcgi --mount /app, /app/env?x=1", &env);
    s.show_fcgi_params("fcgi --mount /app, /app/env?x=1");
    // What Apache sent: the whole path as SCRIPT_NAME, no PATH_INFO.
    assert_eq!(
        s.last_fcgi_param("SCRIPT_NAME").as_deref(),
        Some("/app/env")
    );
    assert_eq!(s.last_fcgi_param("PATH_INFO"), None);
    // What the app sees.
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["QUERY_STRING"], "x=1");
    assert!(
        env.get("HTTP_AUTHORIZATION").is_none(),
        "without CGIPassAuth Apache withholds Authorization (got {:?})",
        env.get("HTTP_AUTHORIZATION")
    );

    let env = s.env("/app/env/a%20b/%C3%A9t%C3%A9?y=2", &[]);
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env/a b/\u{c3}\u{a9}t\u{c3}\u{a9}");
    assert_eq!(env["QUERY_STRING"], "y=2");

    assert_echo(&s, "/app/echo", &body_of(100 * 1024, 2));

    // Without enablereuse, one connection per request.
    let before = s.apache.backend_connects();
    for i in 0..5 {
        let env = s.env(&format!("/app/env?i={i}"), &[]);
        assert_eq!(env["QUERY_STRING"], format!("i={i}"));
    }
    let opened = s.apache.backend_connects() - before;
    eprintln!("without enablereuse: {opened} backend connections for 5 requests");
    assert_eq!(opened, 5);

    s.assert_clean_logs();
}

/// An app path that starts with the mount's own name (`/mount` + `/mount/env`): Apache
/// sends it split already (PATH_INFO the rest), and postern keeps it so.
/// regression (probe 382): the mount was cut from PATH_INFO a second time, so
/// `/mount/mount/admin` reached the app's `/admin`, past a `<Location /mount/admin>`
/// that denied `/mount/admin`.
#[test]
fn an_app_path_repeating_the_mount_s_name_is_not_cut_twice() {
    for (proto, file) in [
        (Proto::FastCgi, "postern-fcgi.conf"),
        (Proto::Uwsgi, "postern-uwsgi.conf"),
    ] {
        let Some(s) = stack(proto, file, "/mount", &testapp(), &[], None, |c| c) else {
            return;
        };
        for (target, path_info) in [
            ("/mount/mount/env?q=1", "/mount/env"),
            ("/mount/mount", "/mount"),
            ("/mount/mountain/", "/mountain/"),
        ] {
            let env = s.env(target, &[]);
            show_env(&format!("{file} {target}"), &env);
            assert_eq!(
                (env["SCRIPT_NAME"].as_str(), env["PATH_INFO"].as_str()),
                (Some("/mount"), Some(path_info)),
                "{file} {target}"
            );
        }
        s.assert_clean_logs();
    }
}

/// Behind an Apache with `MergeSlashes Off`, a `..` takes away the empty segment of a
/// `//`: `/mount/mount/x//..//../env` is `/mount/mount/x/env` to Apache (split as
/// `/mount` + `/mount/x/env`), and postern keeps it so. `/mount/mount//../env` is
/// `/mount/mount/env` to this Apache and `/mount/env` to one that merges `//`: sent as
/// `/mount` + `/mount/env`, it reads both as split and whole, and is refused (400).
/// regression (review 417): postern merged `//` before resolving `..` and read the
/// second as the whole `/mount/env`, and cut it again: the app got `/env`, a path
/// Apache's rules never saw.
#[test]
fn a_split_path_behind_merge_slashes_off_is_not_cut_again() {
    for (proto, file) in [
        (Proto::FastCgi, "postern-fcgi.conf"),
        (Proto::Uwsgi, "postern-uwsgi.conf"),
    ] {
        let Some(s) = stack(proto, file, "/mount", &testapp(), &[], None, |c| {
            c + "\nMergeSlashes Off\n"
        }) else {
            return;
        };
        let target = "/mount/mount/x//..//../env?q=1";
        let env = s.env(target, &[]);
        show_env(&format!("{file} {target}"), &env);
        assert_eq!(
            (env["SCRIPT_NAME"].as_str(), env["PATH_INFO"].as_str()),
            (Some("/mount"), Some("/mount/x/env")),
            "{file} {target}"
        );
        let r = s.apache.request("GET", "/mount/mount//../env", &[], b"");
        assert_eq!(r.status, 400, "{file}: {}\n{}", r.text(), s.postern.logs());
        assert!(
            s.postern
                .wait_log("reads both as the mount point then the path", 5),
            "{}",
            s.postern.logs()
        );
    }
}

/// The root-mount variant without proxy-fcgi-pathinfo and without --mount: Apache
/// sends the path as SCRIPT_NAME, postern moves it to PATH_INFO.
#[test]
fn fastcgi_root_mount_without_pathinfo_env() {
    let Some(s) = fcgi("", &[], |c| edit(&c, SETENVIF, "")) else {
        return;
    };
    let env = s.env("/env/x%20y?q=1", &[]);
    show_env("fcgi root, no pathinfo", &env);
    s.show_fcgi_params("fcgi root, no pathinfo");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["PATH_INFO"], "/env/x y");
    assert_eq!(env["QUERY_STRING"], "q=1");
    let r = s.apache.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    s.assert_clean_logs();
}

/// The root-mount variant with proxy-fcgi-pathinfo (as in the file's comment).
#[test]
fn fastcgi_root_mount_with_pathinfo_recipe() {
    let Some(s) = fcgi("", &[], |c| c) else {
        return;
    };
    let env = s.env("/env/x%20y?q=1", &[]);
    s.show_fcgi_params("fcgi root, pathinfo");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["PATH_INFO"], "/env/x y");
    assert_eq!(env["QUERY_STRING"], "q=1");
    let r = s.apache.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    s.assert_clean_logs();
}

/// Why the deploy file uses SetEnvIf: `SetEnv proxy-fcgi-pathinfo unescape` is applied
/// (by mod_env, in the fixups phase) after mod_proxy_fcgi has decided on PATH_INFO.
/// If a future Apache honours it, this fails, and the comment in
/// deploy/apache/postern-fcgi.conf should be revisited.
#[test]
fn apache_ignores_setenv_for_proxy_fcgi_pathinfo() {
    let Some(s) = fcgi(PREFIX, &[], |c| {
        edit(&c, SETENVIF, "    SetEnv proxy-fcgi-pathinfo unescape\n")
    }) else {
        return;
    };
    let r = s.apache.get("/app/env");
    assert_eq!(r.status, 200);
    s.show_fcgi_params("fcgi SetEnv instead of SetEnvIf");
    assert_eq!(
        s.last_fcgi_param("proxy-fcgi-pathinfo").as_deref(),
        Some("unescape")
    );
    assert_eq!(
        s.last_fcgi_param("PATH_INFO"),
        None,
        "SetEnv proxy-fcgi-pathinfo now works: update deploy/apache/postern-fcgi.conf"
    );
    assert_eq!(
        s.last_fcgi_param("SCRIPT_NAME").as_deref(),
        Some("/app/env")
    );
}

// ---------------------------------------------------------------------------
// 3. FastCGI with enablereuse=on: FCGI_KEEP_CONN connections, sequential and
//    concurrent.

#[test]
fn fastcgi_enablereuse_keep_conn() {
    let Some(s) = fcgi(PREFIX, &["--threads", "2", "--head-timeout", "1"], |c| {
        assert!(c.contains(REUSE), "the deploy file uses enablereuse=on");
        c
    }) else {
        return;
    };

    for i in 0..50 {
        if i % 5 == 4 {
            assert_echo(&s, "/app/echo", &body_of(3000 + i * 7, i as u32));
        } else {
            let env = s.env(&format!("/app/env/{i}?i={i}"), &[]);
            assert_eq!(env["SCRIPT_NAME"], "/app");
            assert_eq!(env["PATH_INFO"], format!("/env/{i}"));
            assert_eq!(env["QUERY_STRING"], format!("i={i}"));
        }
    }
    let sequential = s.apache.backend_connects();
    eprintln!("enablereuse=on: {sequential} backend connection(s) for 50 sequential requests");
    assert!(
        sequential <= 3,
        "connections were not reused: {sequential} for 50 requests"
    );

    // An idle kept connection (longer than postern's --head-timeout) still works.
    std::thread::sleep(Duration::from_millis(2500));
    let env = s.env("/app/env?after=idle", &[]);
    assert_eq!(env["QUERY_STRING"], "after=idle");
    eprintln!(
        "after 2.5 s idle: {} backend connection(s) in all",
        s.apache.backend_connects()
    );

    // 20 at once, with 2 Python threads: more kept connections than threads. Echoes of
    // 20 KB and more (several reads) and environ GETs under the mount.
    let report = Load::new(20, 1)
        .prefix("/app")
        .min_repeat(2500)
        .max_repeat(3000)
        .run(s.apache.port)
        .with_log("Apache error log", s.apache.error_log())
        .with_log("postern log", s.postern.logs());
    report.assert_all_ok();
    eprintln!(
        "after 20 concurrent: {} backend connection(s) in all",
        s.apache.backend_connects()
    );
    // And the pool still serves sequential requests afterwards.
    for i in 0..10 {
        let env = s.env(&format!("/app/env?again={i}"), &[]);
        assert_eq!(env["QUERY_STRING"], format!("again={i}"));
    }
    s.assert_clean_logs();
}

#[test]
fn fastcgi_request_headers_over_64k_get_431_and_the_kept_connection_serves_on() {
    // regression: mod_proxy_fcgi sends PARAMS in 16 KiB records, so nine 8000-byte
    // headers passed postern's 65535-byte limit: postern closed the connection without
    // END_REQUEST and Apache answered 503. Now: 431, as over SCGI.
    let Some(s) = fcgi(PREFIX, &["--threads", "2"], |c| {
        assert!(c.contains(REUSE), "the deploy file uses enablereuse=on");
        c
    }) else {
        return;
    };
    let value = "a".repeat(8000);
    let names: Vec<String> = (1..=9).map(|i| format!("X-Big-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let r = s.apache.request("GET", "/app/env", &headers, b"");
    assert_eq!(
        r.status,
        431,
        "{}\n{}",
        tail(&s.apache.error_log(), 20),
        s.postern.logs()
    );
    assert!(
        s.postern.wait_log("--buffer-size is at its most, 65535", 5),
        "{}",
        s.postern.logs()
    );
    // The kept backend connection serves on.
    let before = s.apache.backend_connects();
    for i in 0..5 {
        let env = s.env(&format!("/app/env?after={i}"), &[]);
        assert_eq!(env["QUERY_STRING"], format!("after={i}"));
    }
    assert!(s.apache.backend_connects() <= before + 1);
    s.assert_clean_logs();
}

// ---------------------------------------------------------------------------
// 4. The Flask and Django examples through mod_proxy_fcgi.

fn check_flask(s: &Stack, prefix: &str) {
    let a = &s.apache;
    let r = a.get(&format!("{prefix}/"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    assert_eq!(r.text(), "Hello from Flask\n");
    assert!(a
        .get(&format!("{prefix}/form"))
        .text()
        .contains("name=\"name\""));
    let r = a.request(
        "POST",
        &format!("{prefix}/form"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=World",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, World!\n"));

    // url_for() builds the Location from SCRIPT_NAME: the prefix must be right.
    let r = a.get(&format!("{prefix}/redirect"));
    assert_eq!(r.status, 302);
    let loc = r.header("Location").unwrap_or_default().to_owned();
    assert!(
        loc.ends_with(&format!("{prefix}/target")),
        "Location: {loc}"
    );
    assert_eq!(
        a.get(&format!("{prefix}/target")).text(),
        "You were redirected\n"
    );

    let data = body_of(300_000, 7);
    let (ctype, body) = multipart("file", "blob.bin", &data);
    let r = a.request(
        "POST",
        &format!("{prefix}/upload"),
        &[("Content-Type", &ctype)],
        &body,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(j["filename"], "blob.bin");
    assert_eq!(j["sha256"], sha256_hex(&data));

    let r = a.get(&format!("{prefix}/set-cookie"));
    let cookies = r.all("Set-Cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let r = a.request(
        "GET",
        &format!("{prefix}/get-cookie"),
        &[("Cookie", "a=1; b=2")],
        b"",
    );
    assert_eq!(r.json(), serde_json::json!({"a": "1", "b": "2"}));
    assert_eq!(
        a.get(&format!("{prefix}/stream")).text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
}

fn check_django(s: &Stack, prefix: &str) {
    let a = &s.apache;
    let r = a.get(&format!("{prefix}/"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    assert_eq!(r.text(), "Hello from Django\n");

    // The form with Django's CSRF check: token and cookie back.
    let r = a.get(&format!("{prefix}/form/"));
    assert_eq!(r.status, 200, "{}", r.text());
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
    let r = a.request(
        "POST",
        &format!("{prefix}/form/"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    assert_eq!(r.text(), "Hello, World!\n");
    let r = a.request(
        "POST",
        &format!("{prefix}/form/"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=NoToken",
    );
    assert_eq!(r.status, 403, "CSRF is enforced");

    let data = body_of(250_000, 9);
    let (ctype, body) = multipart("file", "big.bin", &data);
    let r = a.request(
        "POST",
        &format!("{prefix}/upload/"),
        &[("Content-Type", &ctype)],
        &body,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    let j = r.json();
    assert_eq!(j["size"], data.len());
    assert_eq!(j["sha256"], sha256_hex(&data));

    let r = a.get(&format!("{prefix}/redirect/"));
    assert_eq!(r.status, 302);
    // Under the prefix (probe 402: it was a hard-coded /form/).
    let location = r.header("Location").unwrap();
    assert!(location.ends_with(&format!("{prefix}/form/")), "{location}");
    let r = a.request(
        "GET",
        &format!("{prefix}/cookie/get/"),
        &[("Cookie", "a=1; b=2")],
        b"",
    );
    assert_eq!(r.json(), serde_json::json!({"a": "1", "b": "2"}));
    let r = a.get(&format!("{prefix}/nope/"));
    assert_eq!(r.status, 404);
}

fn flask(proto: Proto, file: &str, prefix: &str, venv: &std::path::Path) -> Option<Stack> {
    let app = root().join("examples/flask_app.py:app");
    stack(
        proto,
        file,
        prefix,
        &app.to_string_lossy(),
        &[],
        Some(venv),
        |c| c,
    )
}

fn django(proto: Proto, file: &str, prefix: &str, venv: &std::path::Path) -> Option<Stack> {
    let project = root().join("examples/django_project");
    stack(
        proto,
        file,
        prefix,
        "mysite.wsgi:application",
        &["--chdir", &project.to_string_lossy()],
        Some(venv),
        |c| c,
    )
}

#[test]
fn flask_example_through_fastcgi_at_prefix() {
    if apache_bin().is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let Some(s) = flask(Proto::FastCgi, "postern-fcgi.conf", PREFIX, &venv) else {
        return;
    };
    check_flask(&s, PREFIX);
    s.assert_clean_logs();
}

#[test]
fn django_example_through_fastcgi_at_root() {
    if apache_bin().is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let Some(s) = django(Proto::FastCgi, "postern-fcgi.conf", "", &venv) else {
        return;
    };
    check_django(&s, "");
    s.show_fcgi_params("django fcgi root, last request");
    s.assert_clean_logs();
}

// ---------------------------------------------------------------------------
// 5. mod_proxy_uwsgi.

#[test]
fn uwsgi_testapp_at_prefix() {
    let Some(s) = stack(
        Proto::Uwsgi,
        "postern-uwsgi.conf",
        PREFIX,
        &testapp(),
        &["--threads", "4"],
        None,
        |c| c,
    ) else {
        return;
    };
    let env = s.env("/app/env?x=1", &[("Authorization", BASIC)]);
    show_env("uwsgi /app/env?x=1", &env);
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env");
    assert_eq!(env["QUERY_STRING"], "x=1");
    assert_eq!(env["REQUEST_URI"], "/app/env?x=1");
    assert_eq!(
        env["HTTP_AUTHORIZATION"], BASIC,
        "mod_proxy_uwsgi passes Authorization without CGIPassAuth"
    );

    let env = s.env("/app/env/a%20b/%C3%A9t%C3%A9", &[]);
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env/a b/\u{c3}\u{a9}t\u{c3}\u{a9}");

    let r = s.apache.get("/app");
    assert_eq!(r.status, 301);
    let r = s.apache.get("/app/");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));

    assert_echo(&s, "/app/echo", &body_of(100 * 1024, 3));
    show_framing(&s, "uwsgi");

    // mod_proxy_uwsgi refuses chunked request bodies (no CONTENT_LENGTH to send).
    let r = s.apache.request_chunked(
        "POST",
        "/app/echo",
        &[],
        &[b"hello ", b"world"],
        Duration::ZERO,
    );
    eprintln!("uwsgi, chunked request body: Apache answered {}", r.status);
    assert_eq!(r.status, 411);

    s.assert_clean_logs();
}

#[test]
fn flask_example_through_uwsgi_at_root() {
    if apache_bin().is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let Some(s) = flask(Proto::Uwsgi, "postern-uwsgi.conf", "", &venv) else {
        return;
    };
    check_flask(&s, "");
    s.assert_clean_logs();
}

#[test]
fn django_example_through_uwsgi_at_prefix() {
    if apache_bin().is_none() {
        return;
    }
    let Some(venv) = venv() else { return };
    let Some(s) = django(Proto::Uwsgi, "postern-uwsgi.conf", PREFIX, &venv) else {
        return;
    };
    check_django(&s, PREFIX);
    s.assert_clean_logs();
}

// ---------------------------------------------------------------------------
// 6. A chunked upload through mod_proxy_fcgi: streamed without CONTENT_LENGTH.

#[test]
fn fastcgi_chunked_upload() {
    let Some(s) = fcgi(PREFIX, &["--threads", "2"], |c| c) else {
        return;
    };
    let data = body_of(300_000, 11);
    let chunks: Vec<&[u8]> = data.chunks(40_000).collect();
    let r = s.apache.request_chunked(
        "POST",
        "/app/echo",
        &[("Content-Type", "application/octet-stream")],
        &chunks,
        Duration::from_millis(50),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    assert_eq!(
        r.header("X-Body-Len"),
        Some(data.len().to_string().as_str())
    );
    assert!(r.body == data, "echoed chunked body differs");
    s.show_fcgi_params("fcgi chunked /app/echo");
    eprintln!(
        "chunked, slow: CONTENT_LENGTH sent by Apache: {:?}",
        s.last_fcgi_param("CONTENT_LENGTH")
    );

    // What the app sees for a chunked body: no CONTENT_LENGTH, no Transfer-Encoding.
    let r = s.apache.request_chunked(
        "POST",
        "/app/env",
        &[("Content-Type", "text/plain")],
        &[b"abc", b"def"],
        Duration::from_millis(50),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    let env = r.json();
    show_env("fcgi chunked /app/env", &env);
    assert!(env.get("HTTP_TRANSFER_ENCODING").is_none());
    assert_eq!(env["wsgi.input_terminated"], "True");

    // All of it at once (Apache may see the whole body before it talks to postern).
    let small = body_of(5000, 12);
    let r = s.apache.request_chunked(
        "POST",
        "/app/echo",
        &[],
        &[&small[..1000], &small[1000..]],
        Duration::ZERO,
    );
    assert_eq!(r.status, 200);
    assert!(r.body == small, "echoed small chunked body differs");
    eprintln!(
        "chunked, fast: CONTENT_LENGTH sent by Apache: {:?}",
        s.last_fcgi_param("CONTENT_LENGTH")
    );

    // A bigger one, read in 64 KiB pieces by the app.
    let big = body_of(2_000_000, 13);
    let chunks: Vec<&[u8]> = big.chunks(100_000).collect();
    let r = s.apache.request_chunked(
        "POST",
        "/app/digest",
        &[],
        &chunks,
        Duration::from_millis(5),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    let j = r.json();
    assert_eq!(j["len"], big.len());
    assert_eq!(j["sha256"], sha256_hex(&big));

    s.assert_clean_logs();
}

// ---------------------------------------------------------------------------
// The PHP-FPM style: a handler for files, not a URL space.

/// `<FilesMatch \.py$> SetHandler "proxy:…|fcgi://…"` (how PHP-FPM is wired) is a
/// handler for URLs that name a `.py` file, not a mount: Apache sends the `.py` URL as
/// SCRIPT_NAME and what follows it as PATH_INFO (CGI's split, which postern keeps), so
/// the app is mounted at each such URL, and every other URL is Apache's (a 404 for a
/// file that is not there). SCRIPT_FILENAME (`proxy:fcgi://localhost//DOCROOT/x.py`) is
/// not looked at, nor does the file have to exist: the app is the one on postern's
/// command line whatever the request names. README's Apache section says to use
/// ProxyPass.
#[test]
fn fastcgi_sethandler_files_style_mounts_the_app_at_each_py_url() {
    let Some(bin) = apache_bin() else {
        return;
    };
    let dir = tempdir();
    let postern = start_postern(dir.path(), Proto::FastCgi, &testapp(), &[], None);
    let site = format!(
        "<FilesMatch \"\\.py$\">\n    SetHandler \"proxy:unix:{}|fcgi://localhost/\"\n</FilesMatch>\n",
        socket(&postern)
    );
    let apache = Apache::start(&bin, dir.path(), &site);
    std::fs::write(apache.dir.join("htdocs/app.py"), "").unwrap();
    let env = |target: &str| -> Value {
        let r = apache.get(target);
        assert_eq!(
            r.status,
            200,
            "GET {target}: {}\n{}",
            r.text(),
            postern.logs()
        );
        r.json()
    };
    let e = env("/app.py/env?q=1");
    assert_eq!(e["SCRIPT_NAME"], "/app.py");
    assert_eq!(e["PATH_INFO"], "/env");
    assert_eq!(e["QUERY_STRING"], "q=1");
    assert!(
        e["SCRIPT_FILENAME"]
            .as_str()
            .unwrap()
            .starts_with("proxy:fcgi://localhost/"),
        "{e}"
    );
    // The .py URL itself is the app's root.
    let r = apache.get("/app.py");
    assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
    // Another .py name reaches the same app: the request never chooses the code.
    let e = env("/other.py/env");
    assert_eq!(e["SCRIPT_NAME"], "/other.py");
    assert_eq!(e["PATH_INFO"], "/env");
    // A URL that names no .py file is Apache's: the app never sees it.
    assert_eq!(apache.get("/env").status, 404);
    assert!(!postern.logs().contains("path=/env "), "{}", postern.logs());
}
