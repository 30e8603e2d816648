//! SCGI (docs/protocols.md §3): through a real nginx `scgi_pass` (the environ, paths and
//! `--mount`, bodies, chunked uploads, streaming, statuses, `close()`, a 200-request
//! load), and raw hostile netstrings straight to the binary, each logged and closed with
//! the next request served. Needs nginx for the first part: fails in CI if missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;
use protocol_tests::stack::{Load, Stack, Upstream};

// ---------------------------------------------------------------------------------
// Helpers

fn start(dir: &Path, args: &[&str]) -> Postern {
    Spawn::unix(dir, &testapp())
        .protocol("scgi")
        .args(["--head-timeout", "1"])
        .args(args.iter().copied())
        .start()
}

/// An SCGI head as nginx writes it (encoded here, independently of postern):
/// `CONTENT_LENGTH` first, then `SCGI` = `1`, then `vars`.
fn scgi_head(vars: &[(&str, &str)], body_len: usize) -> Vec<u8> {
    let len = body_len.to_string();
    let mut all: Vec<(&str, &str)> = vec![("CONTENT_LENGTH", &len), ("SCGI", "1")];
    all.extend_from_slice(vars);
    netstring(&all)
}

/// `vars` exactly as given, as a netstring.
fn netstring(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in vars {
        block.extend_from_slice(k.as_bytes());
        block.push(0);
        block.extend_from_slice(v.as_bytes());
        block.push(0);
    }
    let mut out = format!("{}:", block.len()).into_bytes();
    out.extend_from_slice(&block);
    out.push(b',');
    out
}

fn get_vars(path: &str) -> Vec<(&str, &str)> {
    let q = path.split_once('?').map_or("", |(_, q)| q);
    vec![
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", path),
        ("QUERY_STRING", q),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]
}

fn request(vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = scgi_head(vars, body.len());
    out.extend_from_slice(body);
    out
}

/// An SCGI response: CGI style (`Status:` first, no status line; §3, §0).
#[derive(Debug)]
struct Cgi {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Cgi {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn parse_cgi(resp: &[u8]) -> Option<Cgi> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !resp.starts_with(b"Status: ") {
        return None;
    }
    let head = std::str::from_utf8(&resp[..end]).ok()?;
    let mut status = 0;
    let mut headers = Vec::new();
    for line in head.split("\r\n") {
        let (k, v) = line.split_once(": ")?;
        if k == "Status" {
            status = v.get(..3)?.parse().ok()?;
        } else {
            headers.push((k.to_owned(), v.to_owned()));
        }
    }
    let rest = &resp[end + 4..];
    let body = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
    {
        Some((_, n)) => {
            let n: usize = n.parse().ok()?;
            if rest.len() != n {
                return None;
            }
            rest.to_vec()
        }
        None => rest.to_vec(),
    };
    Some(Cgi {
        status,
        headers,
        body,
    })
}

fn cgi_of(p: &Postern, resp: &[u8]) -> Cgi {
    parse_cgi(resp).unwrap_or_else(|| {
        panic!(
            "not a complete CGI-style response: {:?}\n{}",
            String::from_utf8_lossy(resp),
            p.logs()
        )
    })
}

fn scgi_get(p: &Postern, path: &str) -> Cgi {
    let resp = p.raw(&request(&get_vars(path), b""));
    cgi_of(p, &resp)
}

/// The next normal request succeeds.
fn ok_after(p: &Postern) {
    let r = scgi_get(p, "/hello");
    assert_eq!(r.status, 200, "the next normal request must succeed");
    assert_eq!(r.body, b"hello\n");
}

/// Sends `bytes`, then reads until postern closes: what it answered. (The socket's
/// read timeout is a bound against a hang; its expiry fails as "did not close".)
fn send_expect_close(p: &Postern, bytes: &[u8]) -> Vec<u8> {
    let mut s = p.addr.connect().unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    if let Err(e) = r {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "postern did not close the connection ({e}, got {:?})\n{}",
            String::from_utf8_lossy(&out),
            p.logs()
        );
    }
    out
}

fn body_of(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------
// Through nginx

fn stack_with(tcp: bool, args: &[&str]) -> Option<Stack> {
    Stack::build(Upstream::Scgi)
        .tcp(tcp)
        .args(args.iter().copied())
        .start()
}

/// Runs `f` over a Unix socket and over TCP, then checks nginx logged no upstream error.
fn both(f: impl Fn(&Stack)) {
    for tcp in [false, true] {
        let Some(s) = stack_with(tcp, &["--threads", "4"]) else {
            return;
        };
        f(&s);
        s.assert_clean(if tcp { "tcp" } else { "unix" });
    }
}

#[test]
fn nginx_environ_paths_query_and_headers() {
    both(|s| {
        let r = s.nginx.request(
            "GET",
            "/env/a%20b/caf%C3%A9?x=1&y=%C3%A9",
            &[
                ("X-Custom", "v1"),
                ("Accept", "text/html"),
                ("Accept", "application/json"),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{}", s.postern.logs());
        // nginx hides the CGI Status header.
        assert!(r.header("Status").is_none());
        let e = r.json();
        assert_eq!(e["REQUEST_METHOD"], "GET");
        // scgi_params has no PATH_INFO or SCRIPT_NAME: DOCUMENT_URI (nginx decoded it);
        // PEP 3333: the UTF-8 bytes as latin-1 code points.
        assert_eq!(e["SCRIPT_NAME"], "");
        assert_eq!(e["PATH_INFO"], "/env/a b/caf\u{c3}\u{a9}");
        assert_eq!(e["QUERY_STRING"], "x=1&y=%C3%A9");
        assert_eq!(e["REQUEST_URI"], "/env/a%20b/caf%C3%A9?x=1&y=%C3%A9");
        assert_eq!(e["HTTP_X_CUSTOM"], "v1");
        assert_eq!(e["HTTP_ACCEPT"], "text/html, application/json");
        assert_eq!(e["HTTP_HOST"], "localhost");
        assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
        assert_eq!(e["SERVER_NAME"], "localhost");
        assert_eq!(e["SERVER_PORT"], s.nginx.port.to_string());
        assert_eq!(e["REMOTE_ADDR"], "127.0.0.1");
        assert_eq!(e["wsgi.url_scheme"], "http");
        assert_eq!(e["_types_ok"], true);
        assert!(e.get("CONTENT_TYPE").is_none(), "{e}");
        assert!(e.get("HTTP_CONTENT_LENGTH").is_none());
        // An encoded slash stays a slash after decoding; the query is left alone.
        let e = s.nginx.get("/env/%7Euser/x?a=%20").json();
        assert_eq!(e["PATH_INFO"], "/env/~user/x");
        assert_eq!(e["QUERY_STRING"], "a=%20");
        // POST: CONTENT_TYPE and CONTENT_LENGTH, never as HTTP_*.
        let r = s
            .nginx
            .request("POST", "/env", &[("Content-Type", "text/plain")], b"hello");
        let e = r.json();
        assert_eq!(e["REQUEST_METHOD"], "POST");
        assert_eq!(e["CONTENT_TYPE"], "text/plain");
        assert_eq!(e["CONTENT_LENGTH"], "5");
        assert!(e.get("HTTP_CONTENT_TYPE").is_none());
        assert!(e.get("HTTP_CONTENT_LENGTH").is_none());
    });
}

#[test]
fn nginx_mount_option_splits_script_name() {
    let Some(s) = stack_with(false, &["--mount", "/app", "--mount", "/mount"]) else {
        return;
    };
    let e = s.nginx.get("/app/env/x%20y?q=1").json();
    assert_eq!(e["SCRIPT_NAME"], "/app");
    assert_eq!(e["PATH_INFO"], "/env/x y");
    assert_eq!(e["QUERY_STRING"], "q=1");
    let e = s.nginx.get("/mount/env").json();
    assert_eq!(e["SCRIPT_NAME"], "/mount");
    assert_eq!(e["PATH_INFO"], "/env");
    // Not under a mount (no `/` boundary): the whole path.
    let e = s.nginx.get("/mountain").json();
    assert_eq!(e["SCRIPT_NAME"], "");
    assert_eq!(e["PATH_INFO"], "/mountain");
    s.assert_clean("mount");
}

#[test]
fn nginx_bodies_empty_small_and_5mib_are_byte_exact() {
    both(|s| {
        let r = s.nginx.request("POST", "/echo", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Body-Len"), Some("0"));
        let small = b"name=value&x=\xff\x00\x01";
        let r = s.nginx.request("POST", "/echo", &[], small);
        assert_eq!(r.body, small);
        let big = body_of(5 * 1024 * 1024, 1);
        let r = s.nginx.request("POST", "/echo", &[], &big);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Body-Len"), Some("5242880"));
        assert!(r.body == big, "5 MiB body differs");
        let lines: String = (0..20000).map(|i| format!("line {i}\n")).collect();
        let j = s
            .nginx
            .request("POST", "/input-api", &[], lines.as_bytes())
            .json();
        assert_eq!(j["readline5"], "line ");
        assert_eq!(j["readline"], "0\n");
        assert_eq!(j["readlines"].as_array().unwrap().len(), 19998);
    });
}

#[test]
fn nginx_chunked_upload_arrives_with_a_content_length() {
    both(|s| {
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"POST /digest HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let mut total = 0;
        for i in 0..20u8 {
            let chunk = vec![b'a' + i; 50_000];
            c.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .unwrap();
            c.write_all(&chunk).unwrap();
            c.write_all(b"\r\n").unwrap();
            total += chunk.len();
            std::thread::sleep(Duration::from_millis(10));
        }
        c.write_all(b"0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        let r = parse_http(&out).expect("a response");
        assert_eq!(r.status, 200, "{}", s.postern.logs());
        assert_eq!(r.json()["len"], total);
        // nginx buffered it and sent its length.
        let env = s.nginx.raw(b"POST /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let e = parse_http(&env).unwrap().json();
        assert_eq!(e["CONTENT_LENGTH"], "3");
        assert!(e.get("HTTP_TRANSFER_ENCODING").is_none());
    });
}

#[test]
fn nginx_streamed_response_arrives_in_pieces() {
    both(|s| s.assert_streams());
}

#[test]
fn nginx_statuses_headers_and_close() {
    both(|s| {
        let r = s.nginx.get("/error");
        assert_eq!(r.status, 500);
        assert_eq!(r.text(), "Internal Server Error\n");
        let r = s.nginx.get("/exc-info");
        assert_eq!(r.status, 500);
        assert_eq!(r.header("X-Exc"), Some("1"));
        let r = s.nginx.get("/cookies");
        assert_eq!(r.all("Set-Cookie"), vec!["a=1; Path=/", "b=2; Path=/"]);
        assert_eq!(
            s.nginx.get("/write").text(),
            "written 1\nwritten 2\nreturned\n"
        );
        let head = s
            .nginx
            .raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 6\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");
        let r = s.nginx.get("/file?size=300000");
        let expected: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert!(r.body == expected);
        // close() on success, on error, and when the client goes away mid-response.
        assert_eq!(s.nginx.get("/close?id=ok").text(), "a\nb\n");
        assert_eq!(s.nginx.get("/closed?id=ok").text(), "closed");
        assert_eq!(s.nginx.get("/close-error?id=err").status, 500);
        assert_eq!(s.nginx.get("/closed?id=err").text(), "closed");
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.write_all(b"GET /close-slow?id=abort HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = c.read(&mut buf).unwrap();
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(8);
        while s.nginx.get("/closed?id=abort").text() != "closed" {
            assert!(
                Instant::now() < deadline,
                "close() not called after client abort:\n{}",
                s.postern.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn nginx_two_hundred_requests_over_twenty_connections() {
    let Some(s) = stack_with(false, &["--threads", "4"]) else {
        return;
    };
    s.load(&Load::new(20, 10).max_repeat(300)).assert_all_ok();
    s.assert_clean("load");
}

// ---------------------------------------------------------------------------------
// Raw SCGI

#[test]
fn raw_response_is_cgi_style_and_closes() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    let resp = p.raw(&request(&get_vars("/"), b""));
    assert!(
        resp.starts_with(b"Status: 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    let r = cgi_of(&p, &resp);
    assert_eq!(r.body, b"hello\n");
    assert_eq!(r.header("Content-Length"), Some("6"));
    // The body is exactly CONTENT_LENGTH bytes; what follows is not body.
    let mut bytes = request(
        &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/echo")],
        b"0123456789",
    );
    bytes.extend_from_slice(b"trailing junk");
    let r = cgi_of(&p, &p.raw(&bytes));
    assert_eq!(r.body, b"0123456789");
    // A missing SCGI header is tolerated (docs/protocols.md §3: some clients leave it out).
    let r = cgi_of(
        &p,
        &p.raw(&netstring(&[
            ("CONTENT_LENGTH", "0"),
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/env?z=1"),
            ("QUERY_STRING", "z=1"),
        ])),
    );
    assert_eq!(r.json()["QUERY_STRING"], "z=1");
    assert_eq!(r.json()["PATH_INFO"], "/env");
    // A whole request that comes in pieces (the slow lane).
    let bytes = request(&get_vars("/hello"), b"");
    let mut s = p.addr.connect().unwrap();
    s.write_all(&bytes[..3]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&bytes[3..]).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(cgi_of(&p, &out).body, b"hello\n");
}

// regression: a body longer than its CONTENT_LENGTH left bytes unread in postern's
// socket at its close, which made the close a TCP reset: the client's read failed
// with ECONNRESET, having lost what of the response was still in postern's send
// buffer. Over TCP: a body larger than postern's first read (200 KB, its last bytes
// read to its length), and one that came whole with the bytes past it (60 KB).
#[test]
fn a_body_longer_than_its_content_length_gets_its_whole_answer_and_a_clean_close() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp()).protocol("scgi").start();
    for len in [200_000, 60_000] {
        let body = body_of(len, 7);
        let mut sent = request(&[("REQUEST_METHOD", "POST"), ("PATH_INFO", "/echo")], &body);
        sent.extend_from_slice(b"past the body");
        let mut s = p.addr.connect().unwrap();
        s.write_all(&sent).unwrap();
        let mut got = Vec::new();
        let end = s.read_to_end(&mut got);
        let r = cgi_of(&p, &got);
        assert_eq!(r.status, 200);
        assert!(r.body == body, "{len}: the body came back changed");
        assert!(
            end.is_ok(),
            "{len}: the answer ended in {end:?}, not EOF\n{}",
            p.logs()
        );
    }
    // Over SCGI the warning names nginx's scgi_request_buffering off, the usual cause
    // (regression, probe 322: it blamed "the client").
    assert!(
        p.wait_log("the front server sent bytes past its CONTENT_LENGTH: the app saw the body cut short there. nginx's scgi_request_buffering off", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn raw_bodies_and_input_api() {
    let dir = tempdir();
    let p = start(dir.path(), &["--threads", "2"]);
    for n in [1usize, 70_000, 3_000_000] {
        let body = body_of(n, 5);
        let len = n.to_string();
        let mut s = p.addr.connect().unwrap();
        s.write_all(&request(
            &[
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/echo"),
                ("CONTENT_LENGTH", &len),
            ],
            &body,
        ))
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let r = cgi_of(&p, &out);
        assert_eq!(r.header("X-Body-Len"), Some(len.as_str()));
        assert!(r.body == body, "{n}-byte body differs");
    }
    let body = b"line one\nline two\nabcdef\nthird\nfourth\n";
    let r = cgi_of(
        &p,
        &p.raw(&request(
            &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/input-api")],
            body,
        )),
    );
    let j = r.json();
    assert_eq!(j["readline5"], "line ");
    assert_eq!(j["readline"], "one\n");
    assert_eq!(j["read3"], "lin");
    assert_eq!(j["iter_first"], "e two\n");
    assert_eq!(
        j["readlines"],
        serde_json::json!(["abcdef\n", "third\n", "fourth\n"])
    );
}

/// A valid block whose netstring is then broken by `f`.
fn broken(f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    f(request(&get_vars("/hello"), b""))
}

#[test]
fn hostile_netstrings_are_logged_and_closed() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    let good = request(&get_vars("/hello"), b"");
    let colon = good.iter().position(|&b| b == b':').unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "leading zero",
            broken(|mut v| {
                v.insert(0, b'0');
                v
            }),
            &["SCGI netstring length is not 1-7 decimal digits"],
        ),
        (
            "0 alone",
            b"0:,".to_vec(),
            &["SCGI netstring length is not 1-7 decimal digits"],
        ),
        (
            "8-digit length",
            [&b"12345678:"[..], &good[colon + 1..]].concat(),
            // Over any --buffer-size (65535 at most): answered 431 (below).
            &["over the 65535-byte limit"],
        ),
        (
            "8-digit length under the limit",
            [&b"00000100:"[..], &good[colon + 1..]].concat(),
            &["SCGI netstring length is not 1-7 decimal digits"],
        ),
        (
            "missing colon",
            broken(|mut v| {
                v.remove(colon);
                v
            }),
            &["SCGI netstring length is not 1-7 decimal digits"],
        ),
        (
            "missing comma",
            broken(|mut v| {
                let n = v.len();
                v[n - 1] = b';';
                v
            }),
            &["SCGI header block is not followed by ','"],
        ),
        (
            "CONTENT_LENGTH not first",
            netstring(&[
                ("REQUEST_METHOD", "GET"),
                ("CONTENT_LENGTH", "0"),
                ("REQUEST_URI", "/hello"),
            ]),
            &["the first header is not CONTENT_LENGTH"],
        ),
        (
            "no CONTENT_LENGTH at all",
            netstring(&[("SCGI", "1"), ("REQUEST_METHOD", "GET")]),
            &["the first header is not CONTENT_LENGTH"],
        ),
        (
            "value without its NUL",
            {
                let block = b"CONTENT_LENGTH\x000\x00REQUEST_METHOD\x00GET";
                [format!("{}:", block.len()).as_bytes(), block, b","].concat()
            },
            &["header value without its terminating NUL"],
        ),
        (
            "empty header name",
            {
                let block = b"CONTENT_LENGTH\x000\x00\x00x\x00";
                [format!("{}:", block.len()).as_bytes(), block, b","].concat()
            },
            &["empty header name"],
        ),
        (
            "not a digit",
            b"x12:abc".to_vec(),
            &["SCGI netstring length is not 1-7 decimal digits"],
        ),
    ];
    for (what, bytes, says) in cases {
        let out = send_expect_close(&p, &bytes);
        // Closed without a normal answer; a length of 8 digits is over --buffer-size:
        // 431 (the README's hostile-input table says so).
        if what == "8-digit length" {
            assert!(
                out.starts_with(b"Status: 431"),
                "{what}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        assert!(
            out.is_empty() || out.starts_with(b"Status: 431"),
            "{what}: {:?}",
            String::from_utf8_lossy(&out)
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !says.iter().any(|s| p.logs().contains(s)) {
            assert!(
                Instant::now() < deadline,
                "{what}: the log should say one of {says:?}:\n{}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        ok_after(&p);
    }
    // Every line names the peer.
    for line in p.logs().lines().filter(|l| l.contains("bad request")) {
        assert!(line.contains("peer="), "{line}");
    }
}

#[test]
fn http_text_on_the_scgi_port_gets_an_http_400() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let out = send_expect_close(&p, req);
        let r = parse_http(&out).unwrap_or_else(|| {
            panic!(
                "an HTTP answer for HTTP text: {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        assert_eq!(r.status, 400);
        assert!(r.text().contains("SCGI"), "{}", r.text());
        assert!(
            p.wait_log("HTTP request received on an SCGI socket", 5),
            "{}",
            p.logs()
        );
        ok_after(&p);
    }
    // regression (probe 389): no access line for these answers over uwsgi and SCGI.
    assert!(
        p.wait_log_count("protocol=scgi remote=- method=- path=- status=400", 2, 5),
        "{}",
        p.logs()
    );
}

#[test]
fn head_over_buffer_size_answers_431() {
    let dir = tempdir();
    let p = start(dir.path(), &["--buffer-size", "4096"]);
    let big = "c".repeat(6000);
    let mut v = get_vars("/env");
    v.push(("HTTP_COOKIE", &big));
    let out = send_expect_close(&p, &request(&v, b""));
    let r = cgi_of(&p, &out);
    assert_eq!(r.status, 431);
    assert!(
        p.wait_log("over the 4096-byte limit (raise --buffer-size", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
    // Just under the limit is served.
    let under = "c".repeat(3500);
    let mut v = get_vars("/env");
    v.push(("HTTP_COOKIE", &under));
    let r = cgi_of(&p, &p.raw(&request(&v, b"")));
    assert_eq!(r.json()["HTTP_COOKIE"].as_str().unwrap().len(), 3500);
}

#[test]
fn truncated_head_and_body_are_logged_and_closed() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    // Head cut, then EOF.
    let good = request(&get_vars("/hello"), b"");
    let out = raw_eof(&p.addr, &good[..good.len() - 5]);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(p.wait_log("incomplete request head", 5), "{}", p.logs());
    ok_after(&p);
    // Body cut, then the client is gone.
    let mut s = p.addr.connect().unwrap();
    let mut bytes = scgi_head(
        &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/echo")],
        100_000,
    );
    bytes.extend_from_slice(&[7u8; 1000]);
    s.write_all(&bytes).unwrap();
    drop(s);
    assert!(
        p.wait_log("connection closed after 1000 of 100000 body bytes", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
    // Body cut, the client half-closes: nothing is answered.
    let out = raw_eof(&p.addr, &bytes);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    ok_after(&p);
}

#[test]
fn a_silent_client_is_closed_after_head_timeout() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    let mut idle = p.addr.connect().unwrap();
    let mut partial = p.addr.connect().unwrap();
    partial.write_all(b"40:CONTENT_LEN").unwrap();
    for _ in 0..3 {
        ok_after(&p);
    }
    for s in [&mut idle, &mut partial] {
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out);
        assert!(
            r.is_ok() && out.is_empty(),
            "expected postern to close the silent connection without an answer: {r:?} {out:?}"
        );
    }
    // Closed for the head timeout, and said so (not closed for something else).
    assert!(
        p.wait_log("no complete request head within", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn max_body_answers_413() {
    let dir = tempdir();
    let p = start(dir.path(), &["--max-body", "1k"]);
    let out = p.raw(&request(
        &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/echo")],
        &[1u8; 5000],
    ));
    assert_eq!(cgi_of(&p, &out).status, 413);
    assert!(p.wait_log("--max-body", 5));
    let r = cgi_of(
        &p,
        &p.raw(&request(
            &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/echo")],
            &[1u8; 1000],
        )),
    );
    assert_eq!(r.body, vec![1u8; 1000]);
}

#[test]
fn missing_request_method_answers_400_with_an_scgi_hint() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    let r = cgi_of(&p, &p.raw(&request(&[("REQUEST_URI", "/env")], b"")));
    assert_eq!(r.status, 400);
    ok_after(&p);
    assert!(p.wait_log("no REQUEST_METHOD", 5), "{}", p.logs());
    let line = p
        .logs()
        .lines()
        .find(|l| l.contains("no REQUEST_METHOD"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("scgi_params") && !line.contains("uwsgi_params"),
        "an SCGI socket's hint should name scgi_params: {line}"
    );
}

#[test]
fn errors_and_close_on_client_gone_without_nginx() {
    let dir = tempdir();
    let p = start(dir.path(), &["--threads", "2"]);
    let r = scgi_get(&p, "/error");
    assert_eq!(r.status, 500);
    assert!(p.wait_log("ValueError: boom", 5));
    // The client goes away mid-response: close() runs.
    let mut s = p.addr.connect().unwrap();
    s.write_all(&request(&get_vars("/close-slow?id=gone"), b""))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(s.read(&mut buf).unwrap() > 0);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(8);
    while scgi_get(&p, "/closed?id=gone").body != b"closed" {
        assert!(
            Instant::now() < deadline,
            "close() did not run:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok_after(&p);
}

// A CONTENT_LENGTH that is not a length (negative, an exponent, past 2^63) is answered
// 400, as over FastCGI, with a log line naming the peer and the value.
// regression: closed without an answer (hostile6 LOW).
#[test]
fn a_content_length_that_is_not_a_length_is_answered_400() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    for cl in ["-5", "1e3", "99999999999999999999"] {
        let bytes = [
            netstring(&[
                ("CONTENT_LENGTH", cl),
                ("SCGI", "1"),
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/echo"),
            ]),
            b"abc".to_vec(),
        ]
        .concat();
        let out = send_expect_close(&p, &bytes);
        assert_eq!(cgi_of(&p, &out).status, 400, "{cl}: {}", p.logs());
        let said = format!("CONTENT_LENGTH \"{cl}\" is not a valid length");
        assert!(p.wait_log(&said, 5), "{cl}\n{}", p.logs());
        let line = p
            .logs()
            .lines()
            .find(|l| l.contains(&said))
            .unwrap()
            .to_owned();
        assert!(line.contains("peer="), "{line}");
    }
    ok_after(&p);
}

// regression: a CONTENT_LENGTH repeated with another value was closed without an
// answer here while uwsgi and FastCGI took the last one; now all three refuse it with a
// 400 and a log line naming the peer ("5" then "05" too: two different values). The
// same value twice counts once. (It was one of the malformed heads above.)
#[test]
fn a_content_length_sent_twice_with_different_values_is_refused() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    for second in ["300", "03"] {
        let bytes = [
            netstring(&[
                ("CONTENT_LENGTH", "3"),
                ("REQUEST_METHOD", "POST"),
                ("PATH_INFO", "/echo"),
                ("CONTENT_LENGTH", second),
            ]),
            b"abc".to_vec(),
        ]
        .concat();
        let out = send_expect_close(&p, &bytes);
        assert_eq!(cgi_of(&p, &out).status, 400, "{second}");
    }
    assert!(
        p.wait_log("CONTENT_LENGTH sent twice with different values", 5),
        "{}",
        p.logs()
    );
    for line in p.logs().lines().filter(|l| l.contains("sent twice")) {
        assert!(line.contains("peer="), "{line}");
    }
    let same = [
        netstring(&[
            ("CONTENT_LENGTH", "3"),
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", "3"),
        ]),
        b"abc".to_vec(),
    ]
    .concat();
    let r = cgi_of(&p, &p.raw(&same));
    assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]), "{}", p.logs());
    ok_after(&p);
}

/// SCGI needs no 411 (unlike uwsgi): its first header is a mandatory CONTENT_LENGTH, so
/// a chunked head without one is malformed (400, logged), and nginx's empty chunked body
/// (CONTENT_LENGTH 0 with HTTP_TRANSFER_ENCODING chunked) is served.
#[test]
fn a_chunked_head_needs_its_content_length() {
    let dir = tempdir();
    let p = start(dir.path(), &[]);
    let head = |cl: &'static str| {
        netstring(&[
            ("CONTENT_LENGTH", cl),
            ("SCGI", "1"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/echo"),
            ("HTTP_TRANSFER_ENCODING", "chunked"),
        ])
    };
    let out = send_expect_close(
        &p,
        &[head(""), b"5\r\nhello\r\n0\r\n\r\n".to_vec()].concat(),
    );
    assert_eq!(cgi_of(&p, &out).status, 400, "{}", p.logs());
    assert!(
        p.wait_log("CONTENT_LENGTH \"\" is not a valid length", 5),
        "{}",
        p.logs()
    );
    for (cl, body) in [("0", &b""[..]), ("5", b"hello")] {
        let r = cgi_of(&p, &p.raw(&[head(cl), body.to_vec()].concat()));
        assert_eq!((r.status, &r.body[..]), (200, body), "{}", p.logs());
    }
    ok_after(&p);
}

/// nginx with `*_request_buffering off` still de-chunks a chunked upload before it
/// passes it over uwsgi and SCGI (it buffers those whatever the directive says) and
/// sends its CONTENT_LENGTH with the Transfer-Encoding header: served, not refused 411
/// (uwsgi's 411 is tested in uwsgi_raw).
#[test]
fn nginx_unbuffered_chunked_upload_is_served() {
    for (upstream, directive) in [
        (Upstream::Scgi, "scgi_request_buffering off;"),
        (Upstream::Uwsgi, "uwsgi_request_buffering off;"),
    ] {
        let Some(s) = Stack::build(upstream).extra(directive).start() else {
            return;
        };
        let body = body_of(300_000, 7);
        let mut req = b"POST /digest HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(70_000) {
            req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let r = parse_http(&s.nginx.raw(&req)).expect("a response");
        assert_eq!(r.status, 200, "{directive}\n{}", s.postern.logs());
        assert_eq!(r.json()["len"], body.len(), "{directive}");
        assert_eq!(r.json()["sha256"], sha256_hex(&body), "{directive}");
        // An empty chunked body: CONTENT_LENGTH 0, the header still there.
        let r = parse_http(&s.nginx.raw(b"POST /digest HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")).expect("a response");
        assert_eq!(
            (r.status, &r.json()["len"]),
            (200, &serde_json::json!(0)),
            "{directive}"
        );
        assert!(
            !s.postern.logs().contains("answered 411"),
            "{}",
            s.postern.logs()
        );
        s.assert_clean(directive);
    }
}
