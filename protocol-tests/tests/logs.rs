//! Logs: the access log's three formats, to stderr, to a file or off; the request id
//! (nginx's `$request_id`, or postern's own) in the access line, in environ and on the
//! request's other lines; log files reopened on SIGUSR1 by a real logrotate run with
//! deploy/logrotate/postern; no line lost at exit; start-up output and start-up errors
//! said once. Needs nginx and logrotate: fails in CI if missing, skips loudly locally.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// A small app: echoes its request ids and pid, and writes one `wsgi.errors` line;
/// `/raise` raises (a traceback in the log); `/slow/…` takes a moment first; `/long/…`
/// writes a line of over 6,000 bytes first.
const APP: &str = r#"
import json, os, time

def application(environ, start_response):
    if environ.get("PATH_INFO") == "/raise":
        raise RuntimeError("boom from the app")
    if environ.get("PATH_INFO", "").startswith("/slow/"):
        time.sleep(0.3)
    if environ.get("PATH_INFO", "").startswith("/long/"):
        environ["wsgi.errors"].write("long " + environ["PATH_INFO"] + " " + "x" * 6000 + " end\n")
    environ["wsgi.errors"].write("a line from the app on wsgi.errors\n")
    body = json.dumps({
        "sent": environ.get("HTTP_X_REQUEST_ID"),
        "id": environ.get("postern.request_id"),
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

fn app(dir: &Path) -> String {
    let p = dir.join("ids_app.py");
    std::fs::write(&p, APP).unwrap();
    p.display().to_string()
}

/// A direct uwsgi request as nginx would send it, plus `extra` variables.
fn request(p: &Postern, path: &str, extra: &[(&str, &str)]) -> Response {
    request_at(&p.addr, path, extra).unwrap_or_else(|bad| panic!("{bad}\n{}", p.logs()))
}

fn request_at(addr: &Addr, path: &str, extra: &[(&str, &str)]) -> Result<Response, String> {
    let mut vars = vec![
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("REQUEST_URI", path),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "203.0.113.9"),
        ("HTTP_USER_AGENT", "logs-test/1.0 (\"quoted\")"),
        ("HTTP_REFERER", "http://example.com/from"),
    ];
    vars.extend_from_slice(extra);
    let out = raw(addr, &uwsgi_packet(&vars));
    parse_http(&out).ok_or_else(|| format!("bad response {:?}", String::from_utf8_lossy(&out)))
}

/// Answers from all of `workers` workers (one Python thread each): rounds of that many
/// slow requests at once, each taken by a worker whose thread is free, until every
/// worker has answered (a worker still busy with an earlier request can make a round
/// miss). Returns every answer of every round.
fn one_per_worker(p: &Postern, workers: usize, path: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for _ in 0..10 {
        let answers: Vec<serde_json::Value> = (0..workers)
            .map(|i| {
                let (addr, path) = (p.addr.clone(), format!("/slow{path}-{i}"));
                std::thread::spawn(move || request_at(&addr, &path, &[]).map(|r| r.json()))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()))
            })
            .collect();
        all.extend(answers);
        let pids: BTreeSet<u64> = all.iter().map(|v| v["pid"].as_u64().unwrap()).collect();
        if pids.len() == workers {
            return all;
        }
    }
    panic!("could not reach {workers} workers:\n{}", p.logs());
}

/// The readable part of the connection-pool name postern writes into Apache's
/// `ProxyPass` line for a socket in a test directory (both names are letters, digits and
/// `-` already): its directory and file names, lower case (a hash of the path follows).
fn apache_name(sock: &str) -> String {
    let p = Path::new(sock);
    let part = |s: Option<&std::ffi::OsStr>| s.unwrap().to_str().unwrap().to_lowercase();
    format!(
        "{}-{}",
        part(p.parent().and_then(Path::file_name)),
        part(p.file_stem())
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits up to `secs` until `path` holds a line containing `needle`; returns that line.
fn wait_line(path: &Path, needle: &str, secs: u64) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(l) = read(path).lines().find(|l| l.contains(needle)) {
            return Some(l.to_owned());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `secs` until `path` has `n` lines; returns how many it has.
fn wait_lines(path: &Path, n: usize, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = read(path).lines().count();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of the combined format, split the way log parsers (goaccess's COMBINED,
/// the usual regex) read it: `host ident user [time] "request" status bytes "referer"
/// "agent"`, then what postern appends.
#[derive(Debug)]
struct Combined {
    host: String,
    ident: String,
    user: String,
    time: String,
    request: String,
    status: u16,
    bytes: u64,
    referer: String,
    agent: String,
    rest: String,
}

fn parse_combined(line: &str) -> Option<Combined> {
    let (host, rest) = line.split_once(' ')?;
    let (ident, rest) = rest.split_once(' ')?;
    let (user, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('[')?;
    let (time, rest) = rest.split_once("] ")?;
    let quoted = |s: &str| -> Option<(String, String)> {
        let s = s.strip_prefix('"')?;
        let (v, rest) = s.split_once('"')?;
        Some((
            v.to_owned(),
            rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
        ))
    };
    let (request, rest) = quoted(rest)?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    let (referer, rest) = quoted(rest)?;
    let (agent, rest) = quoted(&rest)?;
    Some(Combined {
        host: host.into(),
        ident: ident.into(),
        user: user.into(),
        time: time.into(),
        request,
        status: status.parse().ok()?,
        bytes: bytes.parse().ok()?,
        referer,
        agent,
        rest,
    })
}

/// `10/Oct/2000:13:55:36 +0000`.
fn is_combined_time(t: &str) -> bool {
    let b = t.as_bytes();
    t.len() == 26
        && b[2] == b'/'
        && b[6] == b'/'
        && b[11] == b':'
        && t.ends_with(" +0000")
        && [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .contains(&&t[3..6])
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// `key=value` from a text or combined access line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    Some(line[start..].split(' ').next().unwrap_or(""))
}

#[test]
fn text_access_lines_carry_pid_protocol_status_bytes_duration_and_id() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path())).start();
    let r = request(&p, "/hello", &[]);
    assert_eq!(r.status, 200);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(p.wait_log("postern::access", 5), "{}", p.logs());
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("postern::access"))
        .unwrap();
    assert!(line.contains(" INFO postern::access: served "), "{line}");
    assert_eq!(field(line, "request_id"), Some(id.as_str()), "{line}");
    assert_eq!(field(line, "pid"), Some(p.pid().to_string().as_str()));
    assert_eq!(field(line, "protocol"), Some("uwsgi"));
    assert_eq!(field(line, "remote"), Some("203.0.113.9"));
    assert_eq!(field(line, "method"), Some("GET"));
    assert_eq!(field(line, "path"), Some("/hello"));
    assert_eq!(field(line, "status"), Some("200"));
    let bytes: usize = field(line, "bytes").unwrap().parse().unwrap();
    assert!(bytes > r.body.len(), "head and body: {line}");
    let ms: f64 = field(line, "ms").unwrap().parse().unwrap();
    assert!(ms >= 0.0, "{line}");
}

#[test]
fn combined_access_log_to_a_file_parses_as_combined() {
    let dir = tempdir();
    let access = dir.path().join("access.log");
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", &access.display().to_string()])
        .args(["--access-log-format", "combined"])
        .start();
    let r = request(&p, "/combined?q=1", &[("REMOTE_USER", "alice")]);
    assert_eq!(r.status, 200);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let line = wait_line(&access, "/combined", 5).expect("an access line in the file");
    let c = parse_combined(&line).unwrap_or_else(|| panic!("not combined: {line}"));
    assert_eq!(c.host, "203.0.113.9");
    assert_eq!(c.ident, "-");
    assert_eq!(c.user, "alice");
    assert!(is_combined_time(&c.time), "{}", c.time);
    assert_eq!(c.request, "GET /combined?q=1 HTTP/1.1");
    assert_eq!(c.status, 200);
    assert!(c.bytes as usize > r.body.len());
    assert_eq!(c.referer, "http://example.com/from");
    // A quote inside a field is escaped as nginx does: the fields still split.
    assert_eq!(c.agent, r#"logs-test/1.0 (\x22quoted\x22)"#);
    // Appended: the duration in seconds ($request_time style), then postern's fields.
    let (secs, tail) = c.rest.split_once(' ').unwrap();
    let (s, ms) = secs.split_once('.').unwrap();
    assert!(
        s.parse::<u64>().is_ok() && ms.len() == 3 && ms.parse::<u32>().is_ok(),
        "{secs}"
    );
    assert_eq!(
        tail,
        format!("request_id={id} pid={} protocol=uwsgi", p.pid())
    );
    assert!(
        !p.logs().contains("postern::access"),
        "access lines go to the file only:\n{}",
        p.logs()
    );
}

#[test]
fn json_access_lines_and_json_logs_share_the_request_id() {
    let dir = tempdir();
    // --access-log-format follows --log-format when not given.
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--log-format", "json"])
        .start();
    let r = request(&p, "/json", &[]);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(
        p.wait_log("\"target\":\"postern::access\"", 5),
        "{}",
        p.logs()
    );
    let mut access = None;
    let mut errors = None;
    for line in p.logs().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["target"] == "postern::access" {
            access = Some(v);
        } else if v["target"] == "wsgi.errors" {
            errors = Some(v);
        }
    }
    let a = access.expect("a JSON access line");
    assert_eq!(a["request_id"], id.as_str());
    assert_eq!(a["pid"], p.pid());
    assert_eq!(a["protocol"], "uwsgi");
    assert_eq!(a["status"], 200);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["uri"], "/json");
    assert_eq!(a["remote_addr"], "203.0.113.9");
    assert_eq!(a["user_agent"], "logs-test/1.0 (\"quoted\")");
    assert!(a["bytes"].as_u64().unwrap() > 0);
    assert!(a["duration_ms"].as_f64().unwrap() >= 0.0);
    let e = errors.expect("the wsgi.errors line");
    assert_eq!(e["span"]["request_id"], id.as_str(), "{e}");
}

#[test]
fn access_log_off_writes_none_and_log_level_does_not_hide_it() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", "off"])
        .start();
    for _ in 0..3 {
        assert_eq!(request(&p, "/off", &[]).status, 200);
    }
    // The app's wsgi.errors lines come after each response's access line would.
    assert!(p.wait_log("a line from the app", 5));
    // --log-level error: no "ready" line to wait for; the socket says when.
    let sock = dir.path().join("quiet.sock");
    let stderr = dir.path().join("quiet.log");
    let child = Command::new(postern_bin())
        .arg(app(dir.path()))
        .args(["--log-level", "error", "--uwsgi"])
        .arg(format!("unix:{}", sock.display()))
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let q = Postern {
        child,
        addr: Addr::Unix(sock.clone()),
        log: stderr,
        dir: dir.path().to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "postern did not start:\n{}",
            q.logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(request(&q, "/quiet", &[]).status, 200);
    assert!(
        q.wait_log("postern::access: served", 5),
        "--log-level error still logs accesses:\n{}",
        q.logs()
    );
    assert!(
        !q.logs().contains("a line from the app"),
        "warn lines are filtered:\n{}",
        q.logs()
    );
    let logs = p.logs();
    assert!(!logs.contains("postern::access"), "{logs}");
}

#[test]
fn generated_ids_are_in_environ_the_access_line_and_the_requests_other_lines() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "2"])
        .start();
    let mut by_pid: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for round in 0..2 {
        for v in one_per_worker(&p, 2, &format!("/gen{round}")) {
            assert_eq!(v["sent"], serde_json::Value::Null);
            let id = v["id"].as_str().unwrap().to_owned();
            assert!(is_hex32(&id), "{id}");
            by_pid
                .entry(v["pid"].as_u64().unwrap())
                .or_default()
                .push(id);
        }
    }
    assert_eq!(by_pid.len(), 2, "both workers served");
    let all: BTreeSet<&String> = by_pid.values().flatten().collect();
    assert_eq!(
        all.len(),
        by_pid.values().map(Vec::len).sum::<usize>(),
        "ids are unique"
    );
    let prefixes: BTreeSet<&str> = by_pid.values().map(|ids| &ids[0][..16]).collect();
    assert_eq!(
        prefixes.len(),
        2,
        "each worker has its own prefix: {by_pid:?}"
    );
    for (pid, ids) in &by_pid {
        let id = ids.last().unwrap();
        let access = format!("request_id={id} pid={pid} protocol=uwsgi");
        assert!(p.wait_log(&access, 5), "{access}\n{}", p.logs());
        let errors = p
            .logs()
            .lines()
            .any(|l| l.contains(&format!("request_id={id} ")) && l.contains("wsgi.errors"));
        assert!(errors, "the wsgi.errors line carries {id}:\n{}", p.logs());
    }
    // A traceback is on a line of its request too.
    let r = request(&p, "/raise", &[("HTTP_X_REQUEST_ID", "trace-me-1")]);
    assert_eq!(r.status, 500);
    assert!(p.wait_log("boom from the app", 5));
    let logs = p.logs();
    let tb = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("request_id=trace-me-1"));
    assert!(tb.is_some(), "{logs}");
}

#[test]
fn an_id_that_could_forge_log_lines_is_replaced_in_the_logs_but_kept_in_environ() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path())).start();
    let forged = "x 2026 INFO postern::access: served";
    let v = request(&p, "/forged", &[("HTTP_X_REQUEST_ID", forged)]).json();
    assert_eq!(v["sent"], forged, "the variable reaches the app as sent");
    let id = v["id"].as_str().unwrap();
    assert!(is_hex32(id), "postern's own id instead: {id}");
    assert!(p.wait_log(&format!("request_id={id}"), 5), "{}", p.logs());
    assert!(!p.logs().contains(forged));
}

// regression: the request span wrote REQUEST_URI raw into postern's own log, so CR/LF
// in it started a forged line there (the access line was escaped, the traceback's not).
#[test]
fn a_request_uri_with_line_breaks_cannot_forge_lines_of_postern_s_log() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path())).start();
    let forged = "2001-01-01T00:00:00.000000Z  INFO postern: forged";
    let uri = format!("/raise\r\n{forged}\x1b[2J");
    let r = request(&p, "/raise", &[("REQUEST_URI", uri.as_str())]);
    assert_eq!(r.status, 500);
    assert!(p.wait_log("boom from the app", 5), "{}", p.logs());
    let logs = p.logs();
    assert!(
        !logs.lines().any(|l| l.starts_with(forged)) && !logs.contains('\x1b'),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("ERROR")
            && l.contains(&format!("path=\"/raise\\x0D\\x0A{forged}\\x1B[2J\""))),
        "the traceback's line shows the path escaped:\n{logs}"
    );
}

// regression (probe 321): the request span wrote a path with spaces bare, so a request
// sent straight to the socket without REQUEST_URI, its PATH_INFO `/say peer=…`, read
// as a span with a second, forged `peer=` (and `request_id=`).
#[test]
fn a_path_with_spaces_cannot_forge_fields_of_the_request_span() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path())).start();
    let path = "/say peer=198.51.100.7:4711 request_id=0 \"q\\";
    let mut vars = vec![
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
    ];
    vars.push(("REMOTE_ADDR", "203.0.113.9"));
    let out = raw(&p.addr, &uwsgi_packet(&vars));
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(p.wait_log("a line from the app", 5), "{}", p.logs());
    let logs = p.logs();
    let line = log_line(&logs, "a line from the app");
    assert!(
        line.contains(r#"path="/say peer=198.51.100.7:4711 request_id=0 \"q\\" peer=unix:"#),
        "the path is one quoted field:\n{logs}"
    );
}

/// A location passing nginx's `$request_id` (and echoing it to the client).
fn with_request_id(location: &str, param: &str) -> String {
    location.replacen(
        "location / {",
        &format!("location / {{\n            {param} HTTP_X_REQUEST_ID $request_id;\n            add_header X-Request-Id $request_id always;"),
        1,
    )
}

#[test]
fn nginx_request_id_is_in_the_access_line_environ_and_wsgi_errors_line() {
    let Some(bin) = nginx_bin() else { return };
    for protocol in ["uwsgi", "fastcgi"] {
        let dir = tempdir();
        let p = Spawn::unix(dir.path(), &app(dir.path()))
            .protocol(protocol)
            .args(["--no-fastcgi-stderr"])
            .start();
        let pass = p.addr.nginx();
        let location = match protocol {
            "uwsgi" => with_request_id(&uwsgi_location(&pass), "uwsgi_param"),
            _ => with_request_id(&fastcgi_location(&pass, ""), "fastcgi_param"),
        };
        let nginx = Nginx::start(&bin, dir.path(), &location);
        // A client's own X-Request-Id does not override nginx's.
        let r = nginx.request("GET", "/via-nginx", &[("X-Request-Id", "client-made")], b"");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
        let id = r.header("X-Request-Id").unwrap().to_owned();
        assert!(is_hex32(&id), "nginx's $request_id: {id}");
        let v = r.json();
        assert_eq!(v["sent"], id.as_str(), "{protocol}: HTTP_X_REQUEST_ID");
        assert_eq!(v["id"], id.as_str(), "{protocol}: postern.request_id");
        let access = format!("request_id={id} pid={} protocol={protocol}", p.pid());
        assert!(p.wait_log(&access, 5), "{access}\n{}", p.logs());
        let logs = p.logs();
        let errors = logs.lines().find(|l| {
            l.contains("a line from the app") && l.contains(&format!("request_id={id} "))
        });
        assert!(
            errors.is_some(),
            "{protocol}: wsgi.errors line with {id}:\n{logs}"
        );
    }
}

/// deploy/logrotate/postern with this test's paths: the log directory, the pidfile,
/// no owner change, and a systemd unit that does not exist (so the pidfile is used).
fn logrotate_conf(dir: &Path, logs: &Path, pidfile: &Path) -> PathBuf {
    let conf = read(&root().join("deploy/logrotate/postern"));
    for needle in [
        "/var/log/postern/*.log",
        "create 0640 myproject adm",
        "postern.service",
        "/run/postern/postern.pid",
        "in postern*)",
    ] {
        assert!(conf.contains(needle), "deploy/logrotate/postern: {needle}");
    }
    // The recipe signals a binary named postern*: the one under test may be a copy
    // named otherwise (POSTERN_BIN).
    let bin = postern_bin();
    let name = Path::new(&bin)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let conf = conf
        .replace(
            "/var/log/postern/*.log",
            &format!("{}/*.log", logs.display()),
        )
        .replace("create 0640 myproject adm", "create 0640")
        .replace("postern.service", "postern-logs-test-absent.service")
        .replace("/run/postern/postern.pid", &pidfile.display().to_string())
        .replace("in postern*)", &format!("in {name})"));
    let path = dir.join("logrotate.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

// regression: with a pidfile left behind (a stop as --uid cannot remove it), the
// recipe's fallback sent SIGUSR1 to whatever process had that pid by then.
#[test]
fn the_logrotate_recipe_does_not_signal_a_process_that_is_not_postern() {
    let Some(logrotate) = logrotate_bin() else {
        return;
    };
    let dir = tempdir();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("postern.log"), "a line\n").unwrap();
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let pidfile = dir.path().join("postern.pid");
    std::fs::write(&pidfile, format!("{}\n", bystander.id())).unwrap();
    let conf = logrotate_conf(dir.path(), &logs, &pidfile);
    let out = Command::new(&logrotate)
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("logrotate.state"))
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.join("postern.log.1").exists(), "rotated");
    std::thread::sleep(Duration::from_millis(200));
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "the process named by the stale pidfile got SIGUSR1");
}

fn logrotate_bin() -> Option<PathBuf> {
    for p in ["/usr/sbin/logrotate", "/usr/bin/logrotate"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if in_ci() {
        panic!("logrotate is not installed, and CI=true: install it in .ci/run");
    }
    eprintln!("\n!!!!! SKIPPING: logrotate is not installed (apt-get install logrotate); this test did NOT run !!!!!\n");
    None
}

/// Rotates with logrotate, then requests until each of `pids` wrote an access line
/// to the new file; checks that no line was lost and the old files kept theirs.
fn rotate_and_check(workers: usize) {
    let Some(logrotate) = logrotate_bin() else {
        return;
    };
    let dir = tempdir();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (access, log, pidfile) = (
        logs.join("access.log"),
        logs.join("postern.log"),
        dir.path().join("postern.pid"),
    );
    let mut spawn = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", &access.display().to_string()])
        .args(["--pidfile", &pidfile.display().to_string()])
        .log_file(&log);
    if workers > 1 {
        spawn = spawn.args(["--workers", &workers.to_string()]);
    }
    let p = spawn.start();
    // Before: every worker has written to the first files.
    let mut sent = one_per_worker(&p, workers, "/before").len();
    assert_eq!(wait_lines(&access, sent, 5), sent);

    let conf = logrotate_conf(dir.path(), &logs, &pidfile);
    let out = Command::new(&logrotate)
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("logrotate.state"))
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (old_access, old_log) = (logs.join("access.log.1"), logs.join("postern.log.1"));
    assert!(old_access.exists() && old_log.exists(), "rotated");
    {
        // The master (--pidfile starts one) reopens at once and says so in the new
        // file.
        assert!(
            wait_line(&log, "log files reopened (SIGUSR1)", 5).is_some(),
            "{}",
            read(&log)
        );
    }
    // After: each worker writes its lines to the new files (a handler may run a moment
    // after logrotate returns: a line or two can still land in the old file).
    let mut in_new = BTreeSet::new();
    for round in 0..10 {
        for v in one_per_worker(&p, workers, &format!("/after{round}")) {
            sent += 1;
            let pid = v["pid"].as_u64().unwrap();
            if wait_line(&access, &format!("pid={pid} "), 2).is_some() {
                in_new.insert(pid);
            }
        }
        if in_new.len() == workers {
            break;
        }
    }
    assert_eq!(
        in_new.len(),
        workers,
        "every process writes to the new access log:\n{}",
        read(&access)
    );
    // Nothing lost: each request has one line, in one file or the other.
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = || read(&access).lines().count() + read(&old_access).lines().count();
    while count() < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(), sent, "one access line per request");
    assert!(read(&old_access).contains("path=/slow/before-0"));
    assert!(read(&old_log).contains("ready"), "{}", read(&old_log));
    // postern's own log: the app's wsgi.errors lines now land in the new file.
    assert!(
        wait_line(&log, "a line from the app", 5).is_some(),
        "{}",
        read(&log)
    );
}

#[test]
fn logrotate_then_sigusr1_reopens_the_files_in_a_master_with_one_worker() {
    // --pidfile starts a master (a single process without it:
    // a_single_process_says_it_reopened_its_log_files_on_sigusr1).
    rotate_and_check(1);
}

#[test]
fn logrotate_then_sigusr1_reopens_the_files_in_the_master_and_every_worker() {
    rotate_and_check(2);
}

#[test]
fn a_log_file_that_cannot_be_reopened_keeps_the_old_one_and_says_so() {
    let dir = tempdir();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let access = logs.join("access.log");
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", &access.display().to_string()])
        .start();
    // The directory goes away (as if logrotate's olddir were misconfigured): the
    // path cannot be opened again.
    let moved = dir.path().join("logs.old");
    std::fs::rename(&logs, &moved).unwrap();
    p.signal(libc::SIGUSR1);
    let old = moved.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.logs().contains("cannot reopen") && Instant::now() < deadline {
        assert_eq!(request(&p, "/kept", &[]).status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Said in postern's own log, not in the access log, which holds access lines only
    // (regression: a text WARN line among them broke its parsers).
    let logs_text = p.logs();
    let warning = logs_text
        .lines()
        .find(|l| l.contains("cannot reopen"))
        .expect("a warning in postern's log");
    assert!(
        warning.contains(&format!("{}", access.display()))
            && warning.contains("still writing to the file it had before"),
        "{warning}"
    );
    assert!(wait_line(&old, "path=/kept", 5).is_some(), "{}", read(&old));
    assert!(!read(&old).contains("cannot reopen"), "{}", read(&old));
    assert!(!logs.exists(), "nothing was created at the old path");
}

// regression (probe): an app that registered faulthandler on SIGUSR1 at its import
// (the usual recipe for stack dumps) took the signal in silence: after logrotate the
// workers went on writing to the rotated file.
#[test]
fn an_app_s_own_sigusr1_handler_does_not_stop_the_log_files_reopening() {
    let dir = tempdir();
    let app = dir.path().join("fh.py");
    std::fs::write(
        &app,
        "import faulthandler, signal, sys\nfaulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n",
    )
    .unwrap();
    let log = dir.path().join("postern.log");
    let access = dir.path().join("access.log");
    let p = Spawn::unix(dir.path(), &format!("{}:application", app.display()))
        .args([
            "--workers",
            "2",
            "--access-log",
            &access.display().to_string(),
        ])
        .log_file(&log)
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    assert!(
        p.logs()
            .contains("the app set a SIGUSR1 handler of its own while it was imported"),
        "{}",
        p.logs()
    );
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    p.signal(libc::SIGUSR1);
    assert!(
        p.wait_log("log files reopened (SIGUSR1)", 10),
        "{}",
        p.logs()
    );
    // The workers write to the new file: their access lines (each worker reopens on
    // the master's forwarded signal; a moment later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&access).matches("path=/after").count() < 10 && Instant::now() < deadline {
        assert_eq!(request(&p, "/after", &[]).status, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (new, old) = (read(&access), read(&rotated));
    assert!(
        new.matches("path=/after").count() >= 10,
        "new: {new}\nold: {old}"
    );
    // Once both workers had reopened, nothing more went to the old file.
    let before = old.matches("path=/after").count();
    for _ in 0..10 {
        assert_eq!(request(&p, "/later", &[]).status, 200);
    }
    assert!(wait_until(10, || read(&access)
        .matches("path=/later")
        .count()
        == 10));
    assert_eq!(read(&rotated).matches("path=/after").count(), before);
    assert!(
        !read(&rotated).contains("path=/later"),
        "{}",
        read(&rotated)
    );
}

/// A 64 KiB tmpfs mounted at `at` for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` (after a loud message) where mounting needs root and this is not it;
    /// in CI a failure.
    fn mount(at: &Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !in_ci(),
                "cannot mount a tmpfs (CI runs as root): this test must not skip"
            );
            eprintln!(
                "\n!!!!! SKIPPING: mounting a tmpfs needs root; this test did NOT run !!!!!\n"
            );
            return None;
        }
        Some(SmallDisk(at.to_owned()))
    }

    /// Fills what is left of it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_said_once_and_the_lines_lost_are_counted_when_it_writes_again() {
    // regression: a full disk lost access lines in silence (only a counter whose help
    // blamed a slow writer), and the line cut off at ENOSPC stayed in the file, the next
    // one glued to it once there was room again.
    let dir = tempdir();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small")) else {
        return;
    };
    let access = disk.0.join("access.log");
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", &access.display().to_string()])
        .start();
    assert_eq!(request(&p, "/before", &[]).status, 200);
    let filler = disk.fill();
    for i in 0..60 {
        assert_eq!(request(&p, &format!("/full-{i}"), &[]).status, 200);
    }
    assert!(
        p.wait_log("No space left on device", 5),
        "the failure is not said in postern's log\n{}",
        p.logs()
    );
    assert_eq!(
        p.logs()
            .matches("its lines are lost until it can be written again")
            .count(),
        1,
        "said once\n{}",
        p.logs()
    );
    std::fs::remove_file(filler).unwrap();
    assert_eq!(request(&p, "/after", &[]).status, 200);
    assert!(
        p.wait_log("could not be written to", 5),
        "no count of the lines lost once it writes again\n{}",
        p.logs()
    );
    assert!(
        wait_line(&access, "path=/after", 5).is_some(),
        "{}",
        read(&access)
    );
    // A line cut off by the full disk stays (its start was written), ended by a
    // newline: the next one is never glued to it.
    for line in read(&access).lines() {
        assert!(
            line.matches(" INFO ").count() <= 1,
            "two access lines glued into one: {line:?}"
        );
    }
}

#[test]
fn no_access_line_is_lost_at_a_graceful_stop() {
    for workers in ["1", "2"] {
        let dir = tempdir();
        let access = dir.path().join("access.log");
        let mut p = Spawn::unix(dir.path(), &app(dir.path()))
            .args(["--access-log", &access.display().to_string()])
            .args(["--workers", workers, "--threads", "4"])
            .start();
        let per_thread = 100;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let addr = p.addr.clone();
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        let pkt = uwsgi_packet(&[
                            ("REQUEST_METHOD", "GET"),
                            ("PATH_INFO", "/burst"),
                            ("REQUEST_URI", "/burst"),
                        ]);
                        let out = raw(&addr, &pkt);
                        assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Straight after the last response: lines may still be queued.
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(30).expect("postern exits");
        assert!(status.success(), "{status}");
        assert_eq!(
            read(&access).lines().count(),
            4 * per_thread,
            "--workers {workers}: every queued line was written before exit"
        );
    }
}

#[test]
fn a_stalled_stderr_never_holds_up_requests_or_the_exit() {
    // regression: a master writing to a stderr pipe nobody read (a stalled journal) hung, and
    // so did the exit waiting for the log writer to flush.
    for workers in ["1", "2"] {
        let dir = tempdir();
        let sock = dir.path().join("stalled.sock");
        // stderr is a pipe nobody reads until postern has exited: full after 64 KiB.
        let mut child = Command::new(postern_bin())
            .arg(app(dir.path()))
            .args(["--workers", workers, "--threads", "2", "--uwsgi"])
            .arg(format!("unix:{}", sock.display()))
            .env_remove("VIRTUAL_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut p = Postern {
            child,
            addr: Addr::Unix(sock.clone()),
            log: dir.path().join("unused.log"),
            dir: dir.path().to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "postern did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        // Two lines a request (access, wsgi.errors): about 1 MB of log in all. A
        // request that waited for its log line would hit the client's read timeout.
        let n = 2000;
        for _ in 0..n {
            assert_eq!(request(&p, "/stalled", &[]).status, 200);
        }
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(30).expect("postern exits with its log stalled");
        assert!(status.success(), "--workers {workers}: {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut out).unwrap();
        let lines = out
            .lines()
            .filter(|l| l.contains("postern::access"))
            .count();
        assert!(
            lines < n,
            "--workers {workers}: lines beyond the pipe's room were dropped ({lines} kept)"
        );
    }
}

#[test]
fn start_up_output_names_version_python_app_and_the_front_server_lines() {
    let dir = tempdir();
    let fcgi = free_port();
    let scgi = free_port();
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi}")])
        .args(["--scgi", &format!("0.0.0.0:{scgi}")])
        .start();
    let Addr::Unix(sock) = &p.addr else {
        unreachable!()
    };
    let sock = sock.display();
    let logs = p.logs();
    for needle in [
        format!("postern {} starting: app ", env!("CARGO_PKG_VERSION")),
        "ids_app.py, Python 3.".to_owned(),
        format!("listening on unix:{sock} (uwsgi); nginx: `uwsgi_pass unix:{sock};`  Apache: `ProxyPass \"/\" \"unix:{sock}|uwsgi://{}-", apache_name(&sock.to_string())),
        format!("listening on 127.0.0.1:{fcgi} (fastcgi); nginx: `fastcgi_pass 127.0.0.1:{fcgi};`  Apache: `ProxyPass \"/\" \"fcgi://127.0.0.1:{fcgi}/\"`"),
        format!("listening on 0.0.0.0:{scgi} (scgi); nginx: `scgi_pass 127.0.0.1:{scgi};`  Apache: `ProxyPass \"/\" \"scgi://127.0.0.1:{scgi}/\"`"),
        "embedded Python started".to_owned(),
        "app imported".to_owned(),
        " ready ".to_owned(),
    ] {
        assert!(logs.contains(&needle), "missing {needle:?} in:\n{logs}");
    }
}

/// Runs postern expecting it to fail at start; returns (exit code, stderr).
fn failed_start(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempdir();
    let out = Command::new(postern_bin())
        .arg(app(dir.path()))
        .args(args)
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_socket_directory_is_said_once_with_how_to_create_it() {
    let dir = tempdir();
    let missing = dir.path().join("missing/dir");
    let sock = format!("unix:{}/s.sock", missing.display());
    let (code, err) = failed_start(&["--uwsgi", &sock]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("cannot listen").count(), 1, "once:\n{err}");
    let m = missing.display();
    assert!(
        err.contains(&format!(
            "postern: cannot listen on {sock}: the directory {m} does not exist; create it (`mkdir -p {m}`) or choose another path"
        )),
        "{err}"
    );
    assert!(
        !err.contains("os error"),
        "the cause once, in words:\n{err}"
    );

    // Under /run, the systemd way is named too.
    let (_, err) = failed_start(&["--uwsgi", "unix:/run/postern-logs-test-none/s.sock"]);
    assert!(
        err.contains("`RuntimeDirectory=postern-logs-test-none` in the systemd unit"),
        "{err}"
    );
}

#[test]
fn an_address_in_use_is_said_once_with_how_to_find_the_holder() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempdir();
    let log = dir.path().join("postern.log");
    let (code, err) = failed_start(&[
        "--uwsgi",
        &format!("127.0.0.1:{port}"),
        "--log-file",
        &log.display().to_string(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    let said = format!(
        "cannot listen on 127.0.0.1:{port}: the address is already in use by another process; find it with `ss -tanp 'sport = :{port}'`, then stop it or choose another address"
    );
    assert_eq!(err.matches("cannot listen").count(), 1, "{err}");
    assert!(err.contains(&said), "{err}");
    // With --log-file, the log file has it too, once.
    let in_log = read(&log);
    assert_eq!(in_log.matches(&said).count(), 1, "{in_log}");
    assert!(in_log.contains("ERROR"), "{in_log}");
}

// regression: with --log-file, a first start whose workers fail said on stderr (the
// journal) only "see the workers' error above", while the error was in the log file.
#[test]
fn a_failed_first_start_with_a_log_file_names_the_file_on_stderr() {
    let dir = tempdir();
    let bad = dir.path().join("brokenapp.py");
    std::fs::write(&bad, "raise RuntimeError('broken at import')\n").unwrap();
    let log = dir.path().join("postern.log");
    let sock = format!("unix:{}", dir.path().join("s.sock").display());
    let out = Command::new(postern_bin())
        .arg(bad.display().to_string())
        .args(["--workers", "2", "--uwsgi", &sock])
        .args(["--log-file", &log.display().to_string()])
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed to start"), "{err}");
    assert!(
        err.contains(&format!("(the log: {})", log.display())),
        "{err}"
    );
    // regression (probe 313): with the log in a file (an ini's `daemonize`), the
    // terminal the start was run from showed nothing at all; now one line says where.
    assert!(
        err.lines().next().is_some_and(|l| l.contains(&format!(
            "runs in the foreground; its log goes to {}",
            log.display()
        ))),
        "{err}"
    );
    assert!(read(&log).contains("broken at import"), "{}", read(&log));
}

// regression: a request postern answered itself (413 over --max-body) was counted in
// /metrics but had no access line.
#[test]
fn a_request_refused_by_postern_has_its_access_line() {
    let dir = tempdir();
    let access = dir.path().join("access.log");
    let body = [b'x'; 100];
    for protocol in ["uwsgi", "fastcgi"] {
        let p = Spawn::unix(dir.path(), &app(dir.path()))
            .protocol(protocol)
            .args(["--access-log", &access.display().to_string()])
            .args(["--access-log-format", "combined"])
            .args(["--max-body", "10"])
            .start();
        let path = format!("/too-big-{protocol}");
        let vars = [
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", path.as_str()),
            ("PATH_INFO", path.as_str()),
            ("CONTENT_LENGTH", "100"),
            ("REMOTE_ADDR", "203.0.113.9"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ];
        let reply = if protocol == "uwsgi" {
            let mut req = uwsgi_packet(&vars);
            req.extend_from_slice(&body);
            raw(&p.addr, &req)
        } else {
            raw(&p.addr, &fcgi::request(1, false, &vars, &body))
        };
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("413"), "{protocol}: {text}");
        let line = wait_line(&access, &path, 5)
            .unwrap_or_else(|| panic!("{protocol}: no access line\n{}", p.logs()));
        let c = parse_combined(&line).unwrap_or_else(|| panic!("not combined: {line}"));
        assert_eq!(c.status, 413, "{line}");
        assert_eq!(c.request, format!("POST {path} HTTP/1.1"));
        assert!(c.bytes > 0, "{line}");
        assert!(c.rest.ends_with(&format!("protocol={protocol}")), "{line}");
    }
}

// regression: a panic (here send() called again from inside its own header iteration,
// which the app sees as a RuntimeError) printed Rust's raw text and backtrace on
// stderr, outside the log's format (and outside the log with --log-file).
#[test]
fn a_panic_is_an_error_event_in_the_log_not_raw_text() {
    let dir = tempdir();
    let app = dir.path().join("reenter.py");
    std::fs::write(
        &app,
        r#"SEND = None

class Headers:
    def __iter__(self):
        try:
            SEND({"type": "http.response.body", "body": b"x"})
        except RuntimeError as e:
            open(__file__ + ".seen", "w").write(str(e))
        yield (b"content-type", b"text/plain")

async def app(scope, receive, send):
    global SEND
    if scope["type"] != "http":
        return
    SEND = send
    await send({"type": "http.response.start", "status": 200, "headers": Headers()})
    await send({"type": "http.response.body", "body": b"ok"})
"#,
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), &format!("{}:app", app.display()))
        .args(["--log-format", "json"])
        .start();
    let pkt = uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")]);
    assert_eq!(parse_http(&raw(&p.addr, &pkt)).unwrap().status, 200);
    let seen = std::fs::read_to_string(dir.path().join("reenter.py.seen")).unwrap_or_default();
    if seen.contains("panic") {
        // The log is written by its own thread: the event may come after the answer.
        assert!(
            p.wait_log("internal error (a bug in postern", 10),
            "{}",
            p.logs()
        );
    }
    // Nothing on stderr but the log's JSON objects: no raw panic text.
    let text = p.logs();
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with('{'), "not a JSON event: {line}\n{text}");
    }
    if seen.contains("panic") {
        let event = text
            .lines()
            .find(|l| l.contains("internal error (a bug in postern"))
            .unwrap_or_else(|| panic!("no panic event:\n{text}"));
        assert!(event.contains("\"level\":\"ERROR\""), "{event}");
        assert!(event.contains("postern::panic"), "{event}");
    }
}

/// `clients` threads each send `per` requests, `{prefix}{c}-{i}`, all answered 200;
/// then a SIGTERM, and postern's exit.
fn load_then_stop(p: &mut Postern, clients: usize, per: usize, prefix: &str) {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = p.addr.clone();
            let prefix = prefix.to_owned();
            std::thread::spawn(move || {
                for i in 0..per {
                    let r = request_at(&addr, &format!("{prefix}{c}-{i}"), &[]).unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    // SAFETY: signals the child we started.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut p.child, 20).is_some(), "{}", p.logs());
}

/// Lines to a file from two workers, each gathered by its writer thread into larger
/// writes under load: every line arrives once and whole, none lost at the stop.
#[test]
fn access_lines_to_a_file_from_busy_workers_arrive_whole_and_once() {
    let dir = tempdir();
    let access = dir.path().join("access.log");
    let mut p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "2", "--access-log", access.to_str().unwrap()])
        .start();
    load_then_stop(&mut p, 4, 100, "/c");
    let text = read(&access);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 400, "{text}");
    for c in 0..4 {
        for i in 0..100 {
            let want = format!("path=/c{c}-{i} ");
            let n = lines.iter().filter(|l| l.contains(&want)).count();
            assert_eq!(n, 1, "{want}: {n} lines");
        }
    }
    assert!(lines.iter().all(|l| l.contains("status=200")), "{text}");
}

/// An access log that is a pipe (a FIFO here; a container's stdout, the journal's
/// socket alike): every line arrives, whole.
#[test]
fn an_access_log_that_is_a_pipe_is_written_by_a_writer_thread() {
    use std::io::BufRead;
    let dir = tempdir();
    let fifo = dir.path().join("access.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&fifo).unwrap();
            std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        })
    };
    let mut p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--access-log", fifo.to_str().unwrap()])
        .start();
    for i in 0..20 {
        assert_eq!(request(&p, &format!("/p{i}"), &[]).status, 200);
    }
    // SIGTERM: postern stops, its lines written out, the pipe closed.
    // SAFETY: signals the child we started.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut p.child, 20).is_some(), "{}", p.logs());
    let lines = reader.join().unwrap();
    for i in 0..20 {
        assert!(
            lines.iter().any(|l| l.contains(&format!("path=/p{i} "))),
            "{lines:?}"
        );
    }
}

/// Lines longer than a pipe keeps whole (`PIPE_BUF`, 4 KiB: a long traceback, a
/// wsgi.errors line) from three busy workers to one pipe whose reader is slower than
/// they write: every line arrives whole, none cut by another process's write.
/// regression: with stderr a pipe (a container's stdout), 474-602 of ~3,700 lines of
/// 5,000 bytes from three workers came cut into pieces with other lines between.
#[test]
fn long_lines_from_several_workers_to_one_pipe_arrive_whole() {
    use std::io::Read;
    let dir = tempdir();
    let fifo = dir.path().join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // What the reader takes from the pipe, also for the harness's start-up wait.
    let copy = dir.path().join("read.log");
    let reader = {
        let (fifo, copy) = (fifo.clone(), copy.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut to = std::fs::File::create(&copy).unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            // Slower than three workers write: the pipe fills, and each long write
            // goes in piece by piece as room is made.
            for n in 0u64.. {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        all.extend_from_slice(&buf[..k]);
                        to.write_all(&buf[..k]).unwrap();
                    }
                }
                if n % 4 == 3 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            all
        })
    };
    let mut p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "3", "--access-log", "off"])
        .args(["--log-file", fifo.to_str().unwrap()])
        .log_read_from(&copy)
        .start();
    load_then_stop(&mut p, 6, 100, "/long/c");
    let text = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let long: Vec<&str> = text.lines().filter(|l| l.contains("xxxxxxxxxx")).collect();
    let whole = |l: &&str| {
        l.matches("long /long/").count() == 1 && l.ends_with(&format!(" {} end", "x".repeat(6000)))
    };
    let cut: Vec<_> = long.iter().filter(|l| !whole(l)).collect();
    assert!(cut.is_empty(), "{} of {} lines cut", cut.len(), long.len());
    for c in 0..6 {
        for i in 0..100 {
            let want = format!("long /long/c{c}-{i} ");
            let n = long.iter().filter(|l| l.contains(&want)).count();
            assert_eq!(n, 1, "{want}: {n} lines");
        }
    }
}

#[test]
fn a_single_process_says_it_reopened_its_log_files_on_sigusr1() {
    // regression (probe 402): a single process (no --pidfile, which starts a master)
    // reopened them in its handler and said nothing, where a master logs the line.
    let dir = tempdir();
    let log = dir.path().join("postern.log");
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "1"])
        .log_file(&log)
        .start();
    assert!(!read(&log).contains("master started"), "{}", read(&log));
    std::fs::rename(&log, dir.path().join("postern.log.1")).unwrap();
    p.signal(libc::SIGUSR1);
    assert!(
        wait_line(&log, "log files reopened (SIGUSR1)", 5).is_some(),
        "{}",
        read(&dir.path().join("postern.log.1"))
    );
    assert_eq!(request(&p, "/after", &[]).status, 200);
}
