//! ASGI apps served by the real binary behind a real nginx (`uwsgi_pass`,
//! `fastcgi_pass` with and without keep-conn, `scgi_pass`) and Apache (mod_proxy_fcgi,
//! mod_proxy_uwsgi): request bodies with their SHA-256, streamed responses, a client
//! that goes away reaching the app as `http.disconnect`, 200 requests over 50
//! connections, a 1 GiB response to a slow reader, and the examples (FastAPI with
//! server-sent events, Starlette with lifespan state, Django's `asgi.py`), each
//! detected as ASGI by its start-up line.
//!
//! The framework-free app is protocol-tests/apps/asgi_app.py (standard library only);
//! the examples need the venv of examples/requirements.txt. In CI (`CI=true`) a missing
//! nginx, Apache or venv fails these tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol_tests::apache::*;
use protocol_tests::harness::*;
use protocol_tests::stack::{assert_streams_at, Load, Stack, Upstream};

const NGINX_UPSTREAMS: [Upstream; 4] = [
    Upstream::Uwsgi,
    Upstream::FastCgi,
    Upstream::FastCgiKeepConn,
    Upstream::Scgi,
];

/// The framework-free ASGI test app.
fn asgi_app() -> String {
    root()
        .join("protocol-tests/apps/asgi_app.py:app")
        .to_string_lossy()
        .into_owned()
}

/// The venv with FastAPI, Starlette and Django (fails in CI when missing).
fn venv() -> Option<PathBuf> {
    if let Some(v) = example_venv() {
        return Some(v);
    }
    if in_ci() {
        panic!("no venv with the examples' packages (.venv or $POSTERN_TEST_VENV), and CI=true");
    }
    eprintln!("\n!!!!! SKIPPING: no venv with the examples' packages (python3 -m venv .venv && .venv/bin/pip install -r examples/requirements.txt) !!!!!\n");
    None
}

/// postern serving `app` (with `args`) on a Unix socket, behind a private nginx passing
/// `location /` over `upstream` with `extra` directives in it.
fn behind_nginx(
    upstream: Upstream,
    app: &str,
    args: &[&str],
    extra: &str,
    prepare: impl FnOnce(Spawn) -> Spawn,
) -> Option<Stack> {
    let bin = nginx_bin()?;
    let dir = tempdir();
    let postern = prepare(Spawn::unix(dir.path(), app))
        .protocol(upstream.protocol())
        .args(args.iter().copied())
        .start();
    let site = upstream.site(&postern.addr.nginx(), extra, "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    Some(Stack::from_parts(nginx, postern, dir))
}

/// The test app behind nginx over `upstream`.
fn test_app(upstream: Upstream, extra: &str) -> Option<Stack> {
    behind_nginx(
        upstream,
        &asgi_app(),
        &["--interface", "asgi"],
        extra,
        |s| s,
    )
}

/// Runs `f` once per nginx upstream with the test app, then checks nginx logged no
/// upstream error and postern no error.
fn each_nginx(mut f: impl FnMut(&Stack, Upstream)) {
    for upstream in NGINX_UPSTREAMS {
        let Some(s) = test_app(upstream, "") else {
            return;
        };
        eprintln!("== {upstream:?}");
        f(&s, upstream);
        s.assert_clean(&format!("{upstream:?}"));
        assert_no_error_lines(&s.postern);
    }
}

/// postern's lines at ERROR, and panics.
fn error_lines(logs: &str) -> impl Iterator<Item = &str> {
    logs.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
}

/// A new directory `name` in `parent` the app writes its records to (0777: whoever
/// postern runs it as).
fn record_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

fn assert_no_error_lines(p: &Postern) {
    let logs = p.logs();
    let bad: Vec<&str> = error_lines(&logs).collect();
    assert!(
        bad.is_empty(),
        "postern logged errors:\n{}\n---- postern log ----\n{logs}",
        bad.join("\n")
    );
}

fn body_of(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// POST `body` to the app's /sha256 through `port`; the app's JSON answer.
fn digest_of(port: u16, body: &[u8], chunked: bool) -> serde_json::Value {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = b"POST /sha256 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n".to_vec();
    if chunked {
        req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        c.write_all(&req).unwrap();
        // Pieces of uneven sizes, a pause between some (the front end cannot have the
        // whole body at once).
        for (i, piece) in body.chunks(70_001).enumerate() {
            let mut b = format!("{:x}\r\n", piece.len()).into_bytes();
            b.extend_from_slice(piece);
            b.extend_from_slice(b"\r\n");
            c.write_all(&b).unwrap();
            if i % 4 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        c.write_all(b"0\r\n\r\n").unwrap();
    } else {
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        c.write_all(&req).unwrap();
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let r = parse_http(&out).unwrap_or_else(|| {
        panic!(
            "incomplete answer to POST /sha256 ({} bytes, chunked {chunked}): {:?}",
            body.len(),
            String::from_utf8_lossy(&out[..out.len().min(300)])
        )
    });
    assert_eq!(r.status, 200, "POST /sha256: {}", r.text());
    r.json()
}

/// 0 B, 1 KiB, 10 MiB, and a chunked upload of 1 MiB: the app reads each through
/// `receive()` and reports its size and SHA-256.
fn check_bodies(port: u16, chunked: bool) {
    let empty = digest_of(port, b"", false);
    assert_eq!(empty["size"], 0);
    assert_eq!(empty["sha256"], sha256_hex(b""));
    // ASGI: an empty body is exactly one http.request with body b"", more_body False.
    assert_eq!(
        (empty["messages"].as_u64(), empty["empty_last"].as_bool()),
        (Some(1), Some(true)),
        "an empty body: {empty}"
    );
    for (len, seed) in [(1024, 1), (10 * 1024 * 1024, 2)] {
        let body = body_of(len, seed);
        let j = digest_of(port, &body, false);
        assert_eq!(j["size"], len, "{j}");
        assert_eq!(j["sha256"], sha256_hex(&body), "a body of {len} bytes");
        eprintln!("  {len} bytes: {} http.request messages", j["messages"]);
    }
    if chunked {
        let body = body_of(1024 * 1024 + 17, 3);
        let j = digest_of(port, &body, true);
        assert_eq!(j["size"], body.len(), "{j}");
        assert_eq!(j["sha256"], sha256_hex(&body), "a chunked upload");
        eprintln!(
            "  chunked {} bytes: {} http.request messages",
            body.len(),
            j["messages"]
        );
    }
}

#[test]
fn bodies_of_0_b_1_kib_10_mib_and_chunked_reach_the_app_with_their_sha256() {
    each_nginx(|s, _| check_bodies(s.nginx.port, true));
}

#[test]
fn a_chunked_upload_streamed_as_fastcgi_stdin_reaches_the_app_in_pieces() {
    // fastcgi_request_buffering off: nginx passes a chunked body on as it comes, as
    // FCGI_STDIN without CONTENT_LENGTH; the app reads it message by message.
    let Some(s) = test_app(Upstream::FastCgi, "fastcgi_request_buffering off;") else {
        return;
    };
    let body = body_of(3 * 1024 * 1024, 4);
    let j = digest_of(s.nginx.port, &body, true);
    assert_eq!(j["size"], body.len(), "{j}");
    assert_eq!(j["sha256"], sha256_hex(&body));
    eprintln!("streamed STDIN: {} http.request messages", j["messages"]);
    assert!(
        j["messages"].as_u64() > Some(1),
        "a body still arriving came in one message: {j}"
    );
    s.assert_clean("fastcgi_request_buffering off");
    assert_no_error_lines(&s.postern);
}

#[test]
fn a_streamed_response_reaches_the_client_while_the_app_runs() {
    each_nginx(|s, _| s.assert_streams());
}

/// Asks the app's /disconnect through `port`, waits until the app marks the request
/// arrived (`dir/name.arrived`), reads the first chunk of the answer for `phase`
/// "during", then closes the connection. Returns what the app recorded in `dir/name`,
/// or why there is nothing.
fn abort_and_read_record(port: u16, dir: &Path, name: &str, phase: &str) -> Result<String, String> {
    abort_and_read_record_with(port, dir, name, phase, "")
}

/// [`abort_and_read_record`] with `query` added to the app's /disconnect target.
fn abort_and_read_record_with(
    port: u16,
    dir: &Path,
    name: &str,
    phase: &str,
    query: &str,
) -> Result<String, String> {
    let target = format!(
        "/disconnect?dir={}&name={name}&phase={phase}{query}",
        dir.display()
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    if !wait_file(&dir.join(format!("{name}.arrived")), 20) {
        return Err("the request never reached the app".into());
    }
    if phase == "during" {
        // The first chunk arrives: the response is under way.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("waiting") {
            match c.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => {
                    return Err(format!(
                        "no first chunk ({other:?}): {:?}",
                        String::from_utf8_lossy(&got)
                    ))
                }
            }
        }
    }
    drop(c);
    let record = dir.join(name);
    // A bound against a hang, not a measure (the app writes the seconds it waited).
    if !wait_file(&record, 5) {
        return Err("no http.disconnect reached the app's pending receive() within 5 s".into());
    }
    Ok(std::fs::read_to_string(record).unwrap())
}

/// Through every nginx upstream, a client that leaves at `phase` ("before" the response
/// starts, or "during" a streamed one) reaches the app's pending `receive()` as
/// `http.disconnect`, and a `send()` after it raises OSError; neither logs an error.
/// Every upstream is tried before failing, so the failure lists them all.
fn assert_disconnect_reaches_the_app(phase: &str) {
    assert_disconnect_reaches_the_app_with(phase, "");
}

/// [`assert_disconnect_reaches_the_app`] with `query` added to the app's /disconnect.
fn assert_disconnect_reaches_the_app_with(phase: &str, query: &str) {
    let mut failures = Vec::new();
    for upstream in NGINX_UPSTREAMS {
        let Some(s) = test_app(upstream, "") else {
            return;
        };
        let dir = record_dir(s.dir.path(), "disconnect");
        let got = abort_and_read_record_with(s.nginx.port, &dir, phase, phase, query);
        eprintln!("{upstream:?}, client gone {phase} the response: {got:?}");
        let ok = got.as_ref().is_ok_and(|r| {
            r.starts_with("receive: http.disconnect\n") && r.contains("send: OSError")
        });
        if !ok {
            failures.push(format!(
                "{upstream:?}, client gone {phase} the response: {got:?}"
            ));
        }
        // A client that leaves is not an error of the app's or postern's.
        let logs = s.postern.logs();
        failures.extend(error_lines(&logs).map(|l| format!("{upstream:?}: postern logged: {l}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_client_gone_during_a_streamed_response_reaches_the_app_as_http_disconnect() {
    assert_disconnect_reaches_the_app("during");
}

#[test]
fn a_client_gone_before_the_response_reaches_the_app_as_http_disconnect() {
    assert_disconnect_reaches_the_app("before");
}

#[test]
fn a_client_gone_reaches_a_task_that_waited_in_receive_while_the_first_chunk_was_sent() {
    // regression (asgi-diff HIGH): sse-starlette's way, a task that reads the body and
    // waits in receive() while another sends. Over FastCGI with keep-conn its wait began
    // while the first chunk's write held the connection on the executor: it was never
    // registered for the server layer's word of the close, and learnt of it only when a
    // later send() failed (nothing in 5 s here).
    assert_disconnect_reaches_the_app_with("during", "&listener=1");
}

#[test]
fn a_send_after_the_client_left_a_streamed_response_raises_at_once() {
    // regression (asgi-diff MEDIUM): the sends after nginx closed the connection
    // returned while the kernel took them, so a stream that never calls receive()
    // (Starlette's StreamingResponse under spec 2.4 relies on send() raising) ran on
    // for 2-3 more chunks. The connection is watched while the response streams now:
    // the first send after the close raises.
    let mut failures = Vec::new();
    for upstream in NGINX_UPSTREAMS {
        let Some(s) = test_app(upstream, "") else {
            return;
        };
        let dir = record_dir(s.dir.path(), "ticks");
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(
            format!(
                "GET /ticks?dir={}&name=ticks&tick=0.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                dir.display()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("chunk 2\n") {
            match c.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!(
                    "{upstream:?}: no chunk 2 ({other:?}): {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        // Gone half a tick before chunk 3 is sent.
        drop(c);
        let record = dir.join("ticks");
        let got = if wait_file(&record, 10) {
            std::fs::read_to_string(&record).unwrap()
        } else {
            "no send raised within 10 s".into()
        };
        eprintln!("{upstream:?}: {got:?}");
        if !got.starts_with("raised at: 3 ") {
            failures.push(format!(
                "{upstream:?}: {got:?} (the send of chunk 3 should raise)"
            ));
        }
        let logs = s.postern.logs();
        failures.extend(error_lines(&logs).map(|l| format!("{upstream:?}: postern logged: {l}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_request_gets_a_shallow_copy_of_the_lifespan_state() {
    // The test app's lifespan stores {"shared": []}; each /state request appends its
    // tag to that list (the same object for all) and sets "tag" in its own scope
    // state (a key no other request may see), 10 at a time.
    let Some(s) = test_app(Upstream::Uwsgi, "") else {
        return;
    };
    let port = s.nginx.port;
    let answers: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c.write_all(
                    format!("GET /state?tag=t{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut out = Vec::new();
                c.read_to_end(&mut out).unwrap();
                parse_http(&out).expect("an answer").json()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let mut shared: Vec<u64> = answers
        .iter()
        .map(|j| j["shared"].as_u64().unwrap())
        .collect();
    for (i, j) in answers.iter().enumerate() {
        assert_eq!(j["tag"], format!("t{i}"), "{j}");
        assert_eq!(
            j["tag_before"],
            serde_json::Value::Null,
            "state leaked between requests: {j}"
        );
    }
    // The list is one object: the last request to append saw all ten.
    shared.sort_unstable();
    assert_eq!(shared.last(), Some(&10), "{answers:?}");
    s.assert_clean("state");
    assert_no_error_lines(&s.postern);
}

/// The `http` part of an app that answers any request with its scope's path fields and
/// headers as JSON.
const SCOPE_ECHO: &str = r#"
body = json.dumps({
    "path": scope["path"],
    "root_path": scope["root_path"],
    "raw_path": (scope["raw_path"] or b"").decode("latin-1"),
    "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
}).encode()
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
await send({"type": "http.response.body", "body": body})
"#;

/// The [`SCOPE_ECHO`] app (written to `dir`) behind nginx over `upstream`.
fn scope_echo(upstream: Upstream, dir: &Path) -> Option<Stack> {
    let module = dir.join("scope_echo.py");
    std::fs::write(&module, AsgiApp::new("import json").http(SCOPE_ECHO)).unwrap();
    let app = format!("{}:app", module.display());
    behind_nginx(upstream, &app, &["--interface", "asgi"], "", |s| s)
}

// regression: over SCGI the path came from REQUEST_URI (decoded, not normalised), over
// uwsgi and FastCGI from nginx's `$document_uri` (`//` merged, `.` and `..` resolved):
// one app behind the three saw `/a//b/./c/../d e` over SCGI, `/a/b/d e` over the others.
#[test]
fn one_app_behind_each_nginx_upstream_sees_one_path_for_a_url() {
    let dir = tempdir();
    for upstream in NGINX_UPSTREAMS {
        let Some(s) = scope_echo(upstream, dir.path()) else {
            return;
        };
        let r = s.nginx.get("/a//b/./c/../d%20e?q=1");
        assert_eq!(r.status, 200, "{upstream:?}: {}", s.postern.logs());
        let j = r.json();
        assert_eq!(
            (&j["path"], &j["root_path"], &j["raw_path"]),
            (
                &serde_json::json!("/a/b/d e"),
                &serde_json::json!(""),
                &serde_json::json!("/a//b/./c/../d%20e")
            ),
            "{upstream:?}"
        );
        s.assert_clean(&format!("{upstream:?}"));
    }
}

// The hop-by-hop headers a client sends reach the app as it sent them, over every
// upstream, as uvicorn and hypercorn give them (README "Hop-by-hop headers the client
// sent stay"); only Transfer-Encoding is dropped (nginx decoded the body).
#[test]
fn hop_by_hop_headers_the_client_sent_are_in_the_scope() {
    let dir = tempdir();
    for upstream in NGINX_UPSTREAMS {
        let Some(s) = scope_echo(upstream, dir.path()) else {
            return;
        };
        let r = s.nginx.raw(
            b"POST /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nKeep-Alive: 300\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        let r = parse_http(&r).unwrap_or_else(|| panic!("{upstream:?}: {}", s.postern.logs()));
        assert_eq!(r.status, 200, "{upstream:?}: {}", s.postern.logs());
        let j = r.json();
        let headers: Vec<(&str, &str)> = j["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap()))
            .collect();
        for sent in [
            ("connection", "close"),
            ("keep-alive", "300"),
            ("te", "trailers"),
            ("content-length", "5"),
        ] {
            assert!(
                headers.contains(&sent),
                "{upstream:?}: {sent:?} in {headers:?}"
            );
        }
        assert!(
            !headers.iter().any(|(k, _)| *k == "transfer-encoding"),
            "{upstream:?}: {headers:?}"
        );
        s.assert_clean(&format!("{upstream:?}"));
    }
}

#[test]
fn two_hundred_requests_over_fifty_connections() {
    each_nginx(|s, _| s.load(&Load::new(50, 4)).assert_all_ok());
}

/// VmRSS and VmHWM of `pid` in KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// postern's processes: the master and its children (the workers).
fn postern_pids(p: &Postern) -> Vec<i32> {
    let master = p.pid();
    let mut pids = vec![master];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
    {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    pids
}

#[test]
fn a_gibibyte_streamed_to_a_slow_reader_grows_postern_by_at_most_64_mib() {
    const SIZE: u64 = 1 << 30;
    let Some(s) = test_app(Upstream::Uwsgi, "") else {
        return;
    };
    // Warm up: the buffers of one streamed response are allocated once.
    let r = s.nginx.get("/big?size=4194304");
    assert_eq!((r.status, r.body.len()), (200, 4 << 20));
    let before: Vec<(i32, u64)> = postern_pids(&s.postern)
        .into_iter()
        .map(|pid| (pid, memory_kib(pid).0))
        .collect();

    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(
        format!("GET /big?size={SIZE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    // The slow reader: nothing at all for a second (the app can produce far more than
    // 64 MiB meanwhile), then reads of 64 KiB with a pause after every 8 MiB.
    std::thread::sleep(Duration::from_secs(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let body_start = loop {
        let n = c.read(&mut buf).expect("reading the head");
        assert!(n > 0, "no answer: {:?}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let status_line = String::from_utf8_lossy(&head[..body_start.min(40)]).into_owned();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let mut total = (head.len() - body_start) as u64;
    let mut since_pause: u64 = 0;
    let mut peak_rss_growth: u64 = 0;
    loop {
        let n = c.read(&mut buf).expect("reading the big response");
        if n == 0 {
            break;
        }
        total += n as u64;
        since_pause += n as u64;
        if since_pause >= 8 << 20 {
            since_pause = 0;
            for &(pid, rss) in &before {
                peak_rss_growth = peak_rss_growth.max(memory_kib(pid).0.saturating_sub(rss));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(
        total,
        SIZE,
        "the response was cut short\n{}",
        s.postern.logs()
    );
    // The high-water mark covers what a sample between pauses missed.
    let mut growth = peak_rss_growth;
    for &(pid, rss) in &before {
        let (_, hwm) = memory_kib(pid);
        growth = growth.max(hwm.saturating_sub(rss));
    }
    eprintln!(
        "1 GiB to a slow reader: postern's largest RSS growth {} KiB (high-water mark over the RSS before)",
        growth
    );
    assert!(
        growth <= 64 * 1024,
        "postern grew by {growth} KiB while streaming 1 GiB to a slow reader (limit 64 MiB)\n{}",
        s.postern.logs()
    );
    s.assert_clean("1 GiB");
    assert_no_error_lines(&s.postern);
}

// ---------------------------------------------------------------------------------
// Apache: mod_proxy_fcgi and mod_proxy_uwsgi.

struct ApacheStack {
    apache: Apache,
    postern: Postern,
    dir: tempfile::TempDir,
}

/// The test app behind Apache with deploy/apache's `file`, mounted at the root.
fn behind_apache(
    proto: Proto,
    file: &str,
    edit_site: impl FnOnce(String) -> String,
) -> Option<ApacheStack> {
    let bin = apache_bin()?;
    let dir = tempdir();
    let postern = start_postern(
        dir.path(),
        proto,
        &asgi_app(),
        &["--interface", "asgi"],
        None,
    );
    let Addr::Unix(sock) = &postern.addr else {
        unreachable!("start_postern listens on a Unix socket")
    };
    let site = deploy_conf(
        file,
        &[("SOCKET", &sock.display().to_string()), ("PREFIX", "")],
    );
    let apache = Apache::start(&bin, dir.path(), &edit_site(site));
    Some(ApacheStack {
        apache,
        postern,
        dir,
    })
}

impl ApacheStack {
    fn assert_clean(&self) {
        let errors: Vec<String> = self
            .apache
            .error_log()
            .lines()
            .filter(|l| l.contains(":error]") || l.contains(":crit]") || l.contains(":emerg]"))
            .map(str::to_owned)
            .collect();
        assert!(
            errors.is_empty(),
            "Apache logged errors:\n{}",
            errors.join("\n")
        );
        assert_no_error_lines(&self.postern);
    }
}

#[test]
fn through_apache_mod_proxy_fcgi() {
    // flushpackets=on: mod_proxy_fcgi passes each piece of a streamed answer on.
    let Some(s) = behind_apache(Proto::FastCgi, "postern-fcgi.conf", |c| {
        edit(&c, "enablereuse=on\n", "enablereuse=on flushpackets=on\n")
    }) else {
        return;
    };
    check_bodies(s.apache.port, true);
    assert_streams_at(s.apache.port, s.dir.path(), &s.postern, || {
        s.apache.error_log()
    });
    let dir = record_dir(s.dir.path(), "disconnect");
    // Apache watches the client only when it writes to it: a client gone while the app
    // sends nothing stays unnoticed (the connection to postern stays open), so the app
    // sends a chunk now and then, as an event stream's keep-alive comments do.
    let got = abort_and_read_record_with(s.apache.port, &dir, "during", "during", "&tick=0.2");
    eprintln!("apache fcgi, client gone during a ticking response: {got:?}");
    let r = got.unwrap_or_else(|e| panic!("{e}\n{}", s.postern.logs()));
    assert!(
        r.starts_with("receive: http.disconnect\n") && r.contains("send: OSError"),
        "{r}"
    );
    // 25 clients: the test Apache has 32 threads (MaxRequestWorkers), and at the
    // limit it logs an [error] line (AH00484) while the rest wait in its queue.
    Load::new(25, 8)
        .run(s.apache.port)
        .with_log("postern log", s.postern.logs())
        .assert_all_ok();
    s.assert_clean();
}

#[test]
fn through_apache_mod_proxy_uwsgi() {
    let Some(s) = behind_apache(Proto::Uwsgi, "postern-uwsgi.conf", |c| c) else {
        return;
    };
    // mod_proxy_uwsgi answers 411 to a chunked body itself (deploy/apache/postern-uwsgi.conf).
    check_bodies(s.apache.port, false);
    assert_streams_at(s.apache.port, s.dir.path(), &s.postern, || {
        s.apache.error_log()
    });
    let dir = record_dir(s.dir.path(), "disconnect");
    // Apache watches the client only when it writes to it: a client gone while the app
    // sends nothing stays unnoticed (the connection to postern stays open), so the app
    // sends a chunk now and then, as an event stream's keep-alive comments do.
    let got = abort_and_read_record_with(s.apache.port, &dir, "during", "during", "&tick=0.2");
    eprintln!("apache uwsgi, client gone during a ticking response: {got:?}");
    let r = got.unwrap_or_else(|e| panic!("{e}\n{}", s.postern.logs()));
    assert!(
        r.starts_with("receive: http.disconnect\n") && r.contains("send: OSError"),
        "{r}"
    );
    // 25 clients: the test Apache has 32 threads (MaxRequestWorkers), and at the
    // limit it logs an [error] line (AH00484) while the rest wait in its queue.
    Load::new(25, 8)
        .run(s.apache.port)
        .with_log("postern log", s.postern.logs())
        .assert_all_ok();
    s.assert_clean();
}

// ---------------------------------------------------------------------------------
// The examples.

/// The start-up line saying how postern serves the app, e.g. "serving the app as
/// ASGI: an instance of fastapi.applications.FastAPI, whose __call__ is a coroutine
/// function (--interface auto)".
fn interface_line(p: &Postern) -> String {
    p.logs()
        .lines()
        .find(|l| l.contains("serving the app as"))
        .unwrap_or_else(|| panic!("no 'serving the app as' line:\n{}", p.logs()))
        .to_owned()
}

fn assert_detected(p: &Postern, interface: &str, because: &str) {
    let line = interface_line(p);
    eprintln!("{line}");
    assert!(
        line.contains(&format!("serving the app as {interface}: ")) && line.contains(because),
        "expected {interface} because of {because:?}: {line}"
    );
}

/// An example (`app`, from the repository root unless `chdir`) behind nginx.
fn example(upstream: Upstream, app: &str, chdir: Option<&str>, venv: &Path) -> Option<Stack> {
    example_with(upstream, app, chdir, venv, &[])
}

/// [`example`] with more postern arguments.
fn example_with(
    upstream: Upstream,
    app: &str,
    chdir: Option<&str>,
    venv: &Path,
    more: &[&str],
) -> Option<Stack> {
    let chdir = chdir.map(|d| root().join(d).display().to_string());
    let mut args = vec!["--threads", "4"];
    args.extend(more);
    if let Some(d) = &chdir {
        args.extend(["--chdir", d.as_str()]);
    }
    let app = if chdir.is_some() {
        app.to_owned()
    } else {
        root().join(app).display().to_string()
    };
    behind_nginx(upstream, &app, &args, "", |s| s.venv(venv))
}

fn multipart(field: &str, filename: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "postern-asgi-boundary-Zk3n9QwL";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reads server-sent events from `c` (a response already under way) until `n` have
/// arrived; returns each event's JSON data with the local time it arrived.
fn read_events(
    c: &mut TcpStream,
    n: usize,
    logs: impl Fn() -> String,
) -> Vec<(serde_json::Value, f64)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut events = Vec::new();
    while events.len() < n {
        let k = c
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading events ({e})\n{}", logs()));
        assert!(
            k > 0,
            "the stream ended after {} events: {:?}\n{}",
            events.len(),
            String::from_utf8_lossy(&raw),
            logs()
        );
        raw.extend_from_slice(&buf[..k]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        while let Some(at) = text.find(&format!("id: {}\ndata: ", events.len())) {
            let rest = &text[at..];
            let Some(data_end) = rest.find("\n\n") else {
                break;
            };
            let data = rest[..data_end].split_once("data: ").unwrap().1;
            events.push((serde_json::from_str(data).unwrap(), now_secs()));
            if events.len() == n {
                break;
            }
        }
    }
    events
}

#[test]
fn fastapi_example_json_upload_stream_and_server_sent_events() {
    let Some(venv) = venv() else { return };
    let Some(s) = example(Upstream::Uwsgi, "examples/fastapi_app.py:app", None, &venv) else {
        return;
    };
    assert_detected(
        &s.postern,
        "ASGI",
        "fastapi.applications.FastAPI, whose __call__ is a coroutine function (--interface auto)",
    );
    let n = &s.nginx;
    assert_eq!(n.get("/").json(), serde_json::json!({"hello": "FastAPI"}));
    let json = [("Content-Type", "application/json")];
    let r = n.request(
        "POST",
        "/api/items",
        &json,
        r#"{"name": "Crème brûlée", "price": 4.5}"#.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}\n{}", r.text(), s.postern.logs());
    let item = serde_json::json!({"id": 1, "name": "Crème brûlée", "price": 4.5});
    assert_eq!(r.json(), item);
    assert_eq!(n.get("/api/items/1").json(), item);
    assert_eq!(n.get("/api/items/7").status, 404);
    assert_eq!(
        n.request("POST", "/api/items", &json, br#"{"name": 1}"#)
            .status,
        422
    );

    // An upload larger than --body-spool-threshold, and the same bytes as a raw body.
    let data = body_of(1_500_000, 5);
    let (ctype, body) = multipart("file", "résumé.bin", &data);
    let r = n.request("POST", "/upload", &[("Content-Type", &ctype)], &body);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    let j = r.json();
    assert_eq!(
        (j["filename"].as_str(), j["size"].as_u64()),
        (Some("résumé.bin"), Some(data.len() as u64))
    );
    assert_eq!(j["sha256"], sha256_hex(&data));
    let r = n.request("POST", "/sha256", &[], &data);
    assert_eq!(r.json()["sha256"], sha256_hex(&data));

    let r = n.get("/stream?n=3&delay=0");
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");

    // Server-sent events: each arrives before the app makes the next (the app stamps
    // each with its clock; the order of two instants on one machine, not a duration;
    // the app waits a second between events, so a loaded machine does not reorder them).
    let mut c = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /events?n=3&delay=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let events = read_events(&mut c, 3, || s.postern.logs());
    for w in events.windows(2) {
        let (arrived, next_made) = (w[0].1, w[1].0["time"].as_f64().unwrap());
        assert!(
            arrived < next_made,
            "event {} arrived at {arrived}, after event {} was made at {next_made}: the events were held back",
            w[0].0["n"],
            w[1].0["n"]
        );
    }
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();

    // A client that leaves the stream early: the app stops producing and says so.
    let mut c = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /events?n=50&delay=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_events(&mut c, 2, || s.postern.logs());
    drop(c);
    assert!(
        s.postern.wait_log("events: the client went away after", 10),
        "the SSE stream went on after the client left:\n{}",
        s.postern.logs()
    );
    s.assert_clean("fastapi");
    assert_no_error_lines(&s.postern);
}

#[test]
fn fastapi_example_mounted_with_mount_routes_below_its_root_path() {
    // nginx passes the whole path; `--mount /app` makes /app the scope's root_path,
    // which FastAPI routes below and puts in its OpenAPI servers and docs page.
    let Some(venv) = venv() else { return };
    let Some(s) = example_with(
        Upstream::Uwsgi,
        "examples/fastapi_app.py:app",
        None,
        &venv,
        &["--mount", "/app"],
    ) else {
        return;
    };
    let n = &s.nginx;
    assert_eq!(
        n.get("/app/").json(),
        serde_json::json!({"hello": "FastAPI"})
    );
    let r = n.get("/app/api/items/7");
    assert_eq!(
        (r.status, r.json()),
        (404, serde_json::json!({"detail": "no item 7"}))
    );
    let openapi = n.get("/app/openapi.json").json();
    assert_eq!(
        openapi["servers"],
        serde_json::json!([{"url": "/app"}]),
        "{openapi}"
    );
    let docs = n.get("/app/docs").text();
    assert!(docs.contains("'/app/openapi.json'"), "{docs}");
    s.assert_clean("fastapi --mount");
    assert_no_error_lines(&s.postern);
}

#[test]
fn starlette_example_shares_its_lifespan_pool_and_isolates_request_state() {
    let Some(venv) = venv() else { return };
    let Some(mut s) = example(
        Upstream::FastCgiKeepConn,
        "examples/starlette_app.py:app",
        None,
        &venv,
    ) else {
        return;
    };
    assert_detected(&s.postern, "ASGI", "starlette.applications.Starlette, whose __call__ is a coroutine function (--interface auto)");
    // Startup ran before the first request.
    assert!(
        s.postern
            .logs()
            .contains("startup: pool of 4 connections opened"),
        "{}",
        s.postern.logs()
    );
    assert_eq!(s.nginx.get("/").text(), "Hello from Starlette\n");
    for i in 1..=3 {
        let j = s.nginx.get(&format!("/query?sql=select%20{i}")).json();
        assert_eq!(j["queries"], i, "one pool shared by every request: {j}");
    }
    // 20 requests at once, each setting its own tag on request.state: none sees
    // another's (each scope has its own shallow copy of the lifespan state).
    let port = s.nginx.port;
    let answers: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c.write_all(
                    format!("GET /state?tag=t{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut out = Vec::new();
                c.read_to_end(&mut out).unwrap();
                parse_http(&out).expect("an answer").json()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for (i, j) in answers.iter().enumerate() {
        assert_eq!(j["tag"], format!("t{i}"), "{j}");
        assert_eq!(
            j["tag_before"],
            serde_json::Value::Null,
            "state leaked between requests: {j}"
        );
    }
    let pool = s.nginx.get("/pool").json();
    assert_eq!(
        pool,
        serde_json::json!({"size": 4, "free": 4, "queries": 3, "closed": false})
    );
    s.assert_clean("starlette");
    // Shutdown runs when the worker stops, after its last request.
    s.postern.signal(libc::SIGTERM);
    assert!(s.postern.wait_exit(20).is_some(), "postern did not stop");
    assert!(
        s.postern
            .logs()
            .contains("shutdown: pool closed after 3 queries"),
        "{}",
        s.postern.logs()
    );
    assert_no_error_lines(&s.postern);
}

#[test]
fn django_example_through_asgi_py_runs_async_and_sync_views() {
    let Some(venv) = venv() else { return };
    let Some(s) = example(
        Upstream::Scgi,
        "mysite.asgi:application",
        Some("examples/django_project"),
        &venv,
    ) else {
        return;
    };
    assert_detected(&s.postern, "ASGI", "django.core.handlers.asgi.ASGIHandler, whose __call__ is a coroutine function (--interface auto)");
    let n = &s.nginx;
    assert_eq!(n.get("/").text(), "Hello from Django\n");
    // The async view runs on the event loop; the sync one in a thread, off the loop.
    let a = n.get("/async/").json();
    assert_eq!(
        (a["view"].as_str(), a["on_event_loop"].as_bool()),
        (Some("async"), Some(true)),
        "{a}"
    );
    let sync = n.get("/sync/").json();
    assert_eq!(
        (sync["view"].as_str(), sync["on_event_loop"].as_bool()),
        (Some("sync"), Some(false)),
        "{sync}"
    );
    assert_ne!(a["thread"], sync["thread"]);
    // Sync views through ASGI too: an upload (Django reads the body from receive()).
    let data = body_of(1_200_000, 6);
    let (ctype, body) = multipart("file", "data.bin", &data);
    let r = n.request("POST", "/upload/", &[("Content-Type", &ctype)], &body);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.postern.logs());
    assert_eq!(r.json()["sha256"], sha256_hex(&data));
    let r = n.request("GET", "/cookie/get/", &[("Cookie", "a=1; b=2")], b"");
    assert_eq!(r.json(), serde_json::json!({"a": "1", "b": "2"}));
    assert_eq!(n.get("/nope/").status, 404);
    s.assert_clean("django asgi");
    assert_no_error_lines(&s.postern);
}

#[test]
fn the_wsgi_examples_are_still_detected_as_wsgi() {
    let Some(venv) = venv() else { return };
    let dir = tempdir();
    for (app, chdir, because) in [
        ("examples/hello.py", None, "(--interface auto)"),
        ("examples/flask_app.py:app", None, "flask.app.Flask"),
        (
            "mysite.wsgi:application",
            Some("examples/django_project"),
            "django.core.handlers.wsgi.WSGIHandler",
        ),
    ] {
        let target = match chdir {
            Some(_) => app.to_owned(),
            None => root().join(app).display().to_string(),
        };
        let mut spawn = Spawn::unix(dir.path(), &target).venv(&venv);
        if let Some(d) = chdir {
            spawn = spawn.args(["--chdir".to_owned(), root().join(d).display().to_string()]);
        }
        let p = spawn.start();
        assert_detected(&p, "WSGI", because);
    }
}

#[test]
fn at_max_concurrency_a_client_gone_still_reaches_the_app_as_http_disconnect() {
    // regression: at --max-concurrency the worker stops looking at its listeners' epoll,
    // where a kept FastCGI connection's records (and its EOF) are read: the front
    // server's close of a connection whose request was in flight went unseen until a
    // place freed, and the app's pending receive() waited.
    let mut failures = Vec::new();
    // Each upstream on asyncio's loop, and the kept FastCGI connection on uvloop too.
    let uvloop = example_venv().map(|v| (Upstream::FastCgiKeepConn, Some(v)));
    let runs = NGINX_UPSTREAMS.map(|u| (u, None)).into_iter().chain(uvloop);
    for (upstream, venv) in runs {
        for phase in ["before", "during"] {
            let Some(s) = behind_nginx(
                upstream,
                &asgi_app(),
                &["--interface", "asgi", "--max-concurrency", "2"],
                "",
                |s| match &venv {
                    Some(v) => s.venv(v),
                    None => s.args(["--loop", "asyncio"]),
                },
            ) else {
                return;
            };
            let upstream = format!(
                "{upstream:?}{}",
                if venv.is_some() { " uvloop" } else { "" }
            );
            let dir = record_dir(s.dir.path(), "disconnect");
            // The other place taken by a request that stays.
            let mut stay = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
            stay.write_all(
                format!(
                    "GET /disconnect?dir={}&name=stay&phase=before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    dir.display()
                )
                .as_bytes(),
            )
            .unwrap();
            assert!(
                wait_file(&dir.join("stay.arrived"), 20),
                "{}",
                s.postern.logs()
            );
            let got = abort_and_read_record(s.nginx.port, &dir, "gone", phase);
            eprintln!("{upstream} {phase}: {got:?}");
            // Within a second of the close (the app writes how long it waited).
            let ok = got.as_ref().is_ok_and(|r| {
                r.starts_with("receive: http.disconnect\n")
                    && r.lines()
                        .find_map(|l| l.strip_prefix("after: "))
                        .and_then(|t| t.parse::<f64>().ok())
                        .is_some_and(|t| t < 1.5)
            });
            if !ok {
                failures.push(format!("{upstream} {phase}: {got:?}"));
            }
            drop(stay);
            if !wait_file(&dir.join("stay"), 5) {
                failures.push(format!(
                    "{upstream} {phase}: the staying request's app never heard its client go"
                ));
            }
            if venv.is_some() {
                assert!(s.postern.logs().contains("event_loop=\"uvloop\""));
            }
            // Both places free again: the worker answers.
            let r = s.nginx.get("/env");
            if r.status != 200 {
                failures.push(format!("{upstream} {phase}: then {}", r.status));
            }
            let logs = s.postern.logs();
            failures.extend(
                error_lines(&logs).map(|l| format!("{upstream} {phase}: postern logged: {l}")),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The start of the framework apps below: Django configured in the module itself, and
/// `mark(which)`, which adds a byte to `$ASGI_TEST_DIR/{MARK}{which}`.
const FRAMEWORK_PREAMBLE: &str = r#"
import asyncio, os

import django
from django.conf import settings

DIR = os.environ["ASGI_TEST_DIR"]

def mark(which):
    with open(os.path.join(DIR, MARK + which), "a") as f:
        f.write("x")

settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                   SECRET_KEY="test", MIDDLEWARE=[])
django.setup()
"#;

/// postern serving the framework app `source` (after [`FRAMEWORK_PREAMBLE`], marks
/// named `mark`…) with `args`, behind nginx over `upstream`; the directory of the
/// app's module (kept as long as the stack) and its marks' directory.
fn framework_stack(
    venv: &Path,
    upstream: Upstream,
    (mark, source): (&str, &str),
    args: &[&str],
) -> Option<(Stack, tempfile::TempDir, PathBuf)> {
    let dir = tempdir();
    let module = dir.path().join("framework_app.py");
    std::fs::write(
        &module,
        format!("MARK = {mark:?}\n{FRAMEWORK_PREAMBLE}{source}"),
    )
    .unwrap();
    let marks = record_dir(dir.path(), "marks");
    let s = behind_nginx(
        upstream,
        &format!("{}:app", module.display()),
        args,
        "",
        |s| {
            s.venv(venv)
                .env("ASGI_TEST_DIR", &marks.display().to_string())
        },
    )?;
    Some((s, dir, marks))
}

/// Django and Starlette answering with a streamed response that declares its
/// Content-Length, the code after its last chunk marking `dir/tail-{which}`: Django's
/// view (its async generator goes on after the last chunk), Starlette's
/// BackgroundTask (as of ASGI spec 2.4, and 2.3: the listener for the disconnect).
const FRAMEWORK_TAILS: &str = r#"

from django.core.asgi import get_asgi_application
from django.http import StreamingHttpResponse
from django.urls import path
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

async def django_stream(request):
    async def chunks():
        yield b"hello"
        await asyncio.sleep(0.05)
        mark("django")
    r = StreamingHttpResponse(chunks(), content_type="text/plain")
    r["Content-Length"] = "5"
    return r

urlpatterns = [path("django/", django_stream)]
dj = get_asgi_application()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"].startswith("/django/"):
        return await dj(scope, receive, send)
    which = scope["path"].strip("/")
    if which == "starlette-2.3":
        scope = dict(scope, asgi=dict(scope["asgi"], spec_version="2.3"))

    async def chunks():
        yield b"hello"
        await asyncio.sleep(0.05)

    r = StreamingResponse(chunks(), media_type="text/plain",
                          headers={"content-length": "5"},
                          background=BackgroundTask(mark, which))
    await r(scope, receive, send)
"#;

#[test]
fn code_after_the_last_chunk_of_a_response_with_a_content_length_runs_in_django_and_starlette() {
    // regression: receive() returned http.disconnect as soon as a streamed response's
    // whole Content-Length was out, before the app's last (empty) http.response.body:
    // Django took it for the client gone and cancelled the view's response, so the
    // code after its last chunk never ran (and postern warned that the app returned
    // without its last body); uvicorn leaves receive() pending until the last body.
    let Some(venv) = venv() else { return };
    for upstream in NGINX_UPSTREAMS {
        let Some((s, _app_dir, marks)) = framework_stack(
            &venv,
            upstream,
            ("tail-", FRAMEWORK_TAILS),
            &["--interface", "asgi"],
        ) else {
            return;
        };
        let paths = ["django", "starlette-2.4", "starlette-2.3"];
        for p in paths {
            for _ in 0..3 {
                let r = s.nginx.get(&format!("/{p}/"));
                assert_eq!(
                    (r.status, r.text().as_str()),
                    (200, "hello"),
                    "{upstream:?} {p}\n{}",
                    s.postern.logs()
                );
            }
        }
        for p in paths {
            let tail = marks.join(format!("tail-{p}"));
            let ran = |n| std::fs::read_to_string(&tail).is_ok_and(|t| t.len() == n);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !ran(3) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                ran(3),
                "{upstream:?} {p}: the code after the last chunk ran {:?} times of 3\n{}",
                std::fs::read_to_string(&tail).map(|t| t.len()),
                s.postern.logs()
            );
        }
        let logs = s.postern.logs();
        assert!(
            !logs.contains("without its last http.response.body"),
            "{upstream:?}\n{logs}"
        );
        s.assert_clean(&format!("{upstream:?}"));
        assert_no_error_lines(&s.postern);
    }
}

/// Endless streams, each marking `$ASGI_TEST_DIR/ended-{which}` once its app's call
/// (its task) ends: Starlette's `StreamingResponse` (as of ASGI spec 2.4: it watches no
/// `receive()` and stops on the OSError of a send; and 2.3: its listener for the
/// disconnect), Django's `StreamingHttpResponse` (its listener), a bare app that
/// lets the OSError of its send go, and one whose only waits are its sends.
const ENDLESS_STREAMS: &str = r#"

from django.core.asgi import get_asgi_application
from django.http import StreamingHttpResponse
from django.urls import path
from starlette.responses import StreamingResponse

async def endless():
    while True:
        yield b"tick\n"
        await asyncio.sleep(0.05)

async def django_stream(request):
    return StreamingHttpResponse(endless(), content_type="text/plain")

urlpatterns = [path("django/", django_stream)]
dj = get_asgi_application()

async def app(scope, receive, send):
    which = scope["path"].strip("/")
    try:
        await serve(scope, receive, send, which)
    finally:
        if which != "hello":
            mark(which)

async def serve(scope, receive, send, which):
    if scope["type"] != "http":
        return
    if which == "django":
        return await dj(scope, receive, send)
    if which == "hello":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})
        return
    if which == "hot":
        # No wait of its own: only its sends can give the loop a turn.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
    if which == "bare":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        async for chunk in endless():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if which == "starlette-2.3":
        scope = dict(scope, asgi=dict(scope["asgi"], spec_version="2.3"))
    await StreamingResponse(endless(), media_type="text/plain")(scope, receive, send)
"#;

#[test]
fn a_head_to_an_endless_stream_ends_its_task_after_the_grace() {
    // regression (probe 364 HIGH): a HEAD to an endless Starlette stream (spec 2.4: it
    // watches no receive(), so only a send that raises stops it) was answered with
    // its head at once and its task ran on for good, every later body discarded,
    // holding its --max-concurrency place: a few `curl -I` filled the worker. A body
    // past a response sent whole now raises OSError 5 s (the grace receive() waits
    // too) after that end. regression (review 366): a stream whose only waits were its
    // sends froze the worker's loop, as a send past the end did not wait.
    let Some(venv) = venv() else { return };
    for upstream in [Upstream::Uwsgi, Upstream::FastCgiKeepConn] {
        let Some((s, _app_dir, marks)) = framework_stack(
            &venv,
            upstream,
            ("ended-", ENDLESS_STREAMS),
            &["--interface", "asgi", "--max-concurrency", "6"],
        ) else {
            return;
        };
        let paths = ["starlette-2.4", "starlette-2.3", "django", "bare", "hot"];
        for p in paths {
            let r = s.nginx.raw(
                format!("HEAD /{p}/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let r = String::from_utf8_lossy(&r);
            assert!(
                r.starts_with("HTTP/1.1 200"),
                "{upstream:?} {p}: {r}\n{}",
                s.postern.logs()
            );
        }
        let hello = || {
            let r = s.nginx.get("/hello/");
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "hello"),
                "{upstream:?}\n{}",
                s.postern.logs()
            );
        };
        // The loop serves on meanwhile (one place is left), well within the grace.
        let t = std::time::Instant::now();
        hello();
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{upstream:?}: the loop was held {:?}",
            t.elapsed()
        );
        // Each task ends after the grace.
        for p in paths {
            let ended = marks.join(format!("ended-{p}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !ended.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                ended.exists(),
                "{upstream:?} {p}: the endless stream of a HEAD did not end\n{}",
                s.postern.logs()
            );
        }
        hello();
        s.assert_clean(&format!("{upstream:?}"));
        assert_no_error_lines(&s.postern);
    }
}

/// Answers 100 KB (over FastCGI written on the executor: 64 KiB or more) while a task
/// waits on receive() for the disconnect, as Django's listener does; says in
/// `$ASGI_TEST_DIR/early` when that task heard of a disconnect before the response's
/// last send() returned.
const LAST_WRITE_APP: &str = r#"
import asyncio, os

BODY = b"x" * 100_000

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    sent = []
    async def listen():
        m = await receive()
        if m["type"] == "http.disconnect" and not sent:
            with open(os.path.join(os.environ["ASGI_TEST_DIR"], "early"), "a") as f:
                f.write("x")
    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"100000")]})
    await send({"type": "http.response.body", "body": BODY})
    sent.append(True)
    await listener
"#;

#[test]
fn at_max_concurrency_nginx_closing_a_kept_connection_after_the_response_is_no_client_gone() {
    // regression: review LOW on c83a2df/ad5283e: at --max-concurrency the loop peeks at
    // a kept FastCGI connection for its close while a receive() waits; a response's
    // last write runs on the executor, and nginx, which had all of it, closed the
    // connection (past its keepalive_requests, or its pool full) before the loop
    // heard the write end: the EOF was taken for the client gone (access line "client
    // went away", http.disconnect to the app while its last send() still waited).
    let Some(bin) = nginx_bin() else {
        assert!(!in_ci(), "no nginx, and CI=true");
        return;
    };
    let dir = tempdir();
    let p = Spawn::asgi_unix(dir.path(), "last_write_app", LAST_WRITE_APP)
        .protocol("fastcgi")
        .env("ASGI_TEST_DIR", dir.path().to_str().unwrap())
        .args(["--loop", "asyncio", "--max-concurrency", "1"])
        .start();
    // nginx closes each kept connection once its one request is answered.
    let site = Upstream::FastCgiKeepConn
        .site(&p.addr.nginx(), "", "")
        .replace("keepalive 32;", "keepalive 32;\n    keepalive_requests 1;");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    let s = Stack::from_parts(nginx, p, dir);
    let n = 200;
    for i in 0..n {
        let r = s.nginx.get(&format!("/r{i}"));
        assert_eq!((r.status, r.body.len()), (200, 100_000), "request {i}");
    }
    assert!(
        s.postern.wait_log(&format!("path=/r{}", n - 1), 10),
        "{}",
        s.postern.logs()
    );
    let logs = s.postern.logs();
    let gone = logs.matches("client went away").count();
    let early = std::fs::read_to_string(s.dir.path().join("early")).unwrap_or_default();
    assert_eq!(
        (gone, early.len()),
        (0, 0),
        "of {n} requests: access lines 'client went away', disconnects heard early\n{logs}"
    );
    s.assert_clean("keep-conn, keepalive_requests 1");
}

/// Starlette: a stream, and an upload read with `request.body()` (which raises
/// `ClientDisconnect` at an `http.disconnect`); each marks its start in
/// `$ASGI_TEST_DIR`.
const STARLETTE_GONE: &str = r#"
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

def mark(name):
    open(os.path.join(os.environ["ASGI_TEST_DIR"], name), "a").close()

async def chunks():
    for _ in range(3000):
        yield b"x" * 99 + b"\n"
        await asyncio.sleep(0.01)

async def stream(request):
    mark("stream")
    return StreamingResponse(chunks(), media_type="text/plain", headers={"X-Accel-Buffering": "no"})

async def upload(request):
    mark("upload")
    body = await request.body()
    return PlainTextResponse("got %d" % len(body))

app = Starlette(routes=[Route("/stream", stream), Route("/upload", upload, methods=["POST"])])
"#;

// regression: hostile4 MEDIUM: behind nginx (fastcgi_request_buffering off), a client
// that left mid-upload made Starlette's ClientDisconnect an ERROR 'the app raised an
// exception; answered 500' (access line status=500, counted as a 5xx and an app
// error) though nothing was answered; a client that left mid-stream was counted as an
// app exception (the ClientDisconnect Starlette raises from the send's OSError).
#[test]
fn starlette_behind_nginx_a_client_gone_mid_upload_or_mid_stream_logs_no_error() {
    let Some(venv) = venv() else { return };
    let mut failures = Vec::new();
    for upstream in NGINX_UPSTREAMS {
        let dir = tempdir();
        let module = dir.path().join("starlette_gone.py");
        std::fs::write(&module, STARLETTE_GONE).unwrap();
        let marks = dir.path().join("marks");
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let unbuffered = match upstream {
            Upstream::Uwsgi => "uwsgi_request_buffering off;",
            Upstream::Scgi => "scgi_request_buffering off;",
            _ => "fastcgi_request_buffering off;",
        };
        let Some(s) = behind_nginx(
            upstream,
            &format!("{}:app", module.display()),
            &["--interface", "asgi"],
            unbuffered,
            |s| {
                s.venv(&venv)
                    .env("ASGI_TEST_DIR", &marks.display().to_string())
            },
        ) else {
            return;
        };
        // Half an upload, then the client leaves.
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
            .unwrap();
        c.write_all(&[b'a'; 50_000]).unwrap();
        // Over uwsgi and SCGI postern reads the body before it calls the app.
        if matches!(upstream, Upstream::FastCgi | Upstream::FastCgiKeepConn) {
            assert!(
                wait_file(&marks.join("upload"), 20),
                "{upstream:?}: the upload never reached the app\n{}",
                s.postern.logs()
            );
        }
        drop(c);
        // A stream the client leaves once it has its first chunks.
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while got < 1000 {
            match c.read(&mut buf) {
                Ok(n) if n > 0 => got += n,
                other => panic!("{upstream:?}: no stream ({other:?})"),
            }
        }
        drop(c);
        let ended = |path: &str| -> Vec<String> {
            s.postern
                .logs()
                .lines()
                .filter(|l| l.contains("postern::access") && l.contains(&format!(" path={path} ")))
                .map(str::to_owned)
                .collect()
        };
        // Over uwsgi and SCGI the upload is the server layer's, not the app's: it
        // has its access line all the same (regression, asgi-diff: only a warning).
        // Both requests end in either order, and their lines go through the log's
        // writer thread: wait for each, then count.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while (ended("/stream").is_empty() || ended("/upload").is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(25));
        }
        let logs = s.postern.logs();
        let mut lines = ended("/stream");
        lines.extend(ended("/upload"));
        if lines.len() != 2 {
            failures.push(format!("{upstream:?}: access lines {lines:?}"));
        }
        failures.extend(
            lines
                .iter()
                // nginx's scgi_request_buffering off announces as CONTENT_LENGTH the
                // bytes it had read: over SCGI the upload may come whole, and served.
                .filter(|l| !(upstream == Upstream::Scgi && l.contains("path=/upload")))
                .filter(|l| {
                    !l.contains("client went away")
                        || (l.contains("path=/upload") && !l.contains(" status=0 "))
                })
                .map(|l| format!("{upstream:?}: {l}")),
        );
        failures.extend(error_lines(&logs).map(|l| format!("{upstream:?}: postern logged: {l}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
