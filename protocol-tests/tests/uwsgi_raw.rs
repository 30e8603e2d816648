//! Raw uwsgi bytes straight to the real binary (no front server): malformed, truncated,
//! oversized and silent peers each get a clean close and a log line, and the next normal
//! request is served. Also the WSGI duties that do not need nginx.

use std::io::{Read, Write};
use std::time::Duration;

use protocol_tests::harness::*;

fn ok_after(p: &Postern) {
    let (status, body) = p.get("/hello");
    assert_eq!(status, 200, "the next normal request must succeed");
    assert_eq!(body, b"hello\n");
}

fn start(dir: &std::path::Path) -> Postern {
    Spawn::tcp(dir, &testapp())
        .args(["--head-timeout", "1"])
        .start()
}

#[test]
fn truncated_header_is_closed_and_logged() {
    let dir = tempdir();
    let p = start(dir.path());
    let out = raw_eof(&p.addr, &[0, 0x10]); // modifier1 0, then one byte of datasize, then EOF
    assert!(out.is_empty());
    assert!(p.wait_log("incomplete request head", 5), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn truncated_vars_block_is_closed_and_logged() {
    let dir = tempdir();
    let p = start(dir.path());
    let pkt = uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")]);
    let out = raw_eof(&p.addr, &pkt[..pkt.len() - 3]);
    assert!(out.is_empty());
    assert!(p.wait_log("incomplete request head", 5), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn var_length_overrunning_the_packet_is_rejected() {
    let dir = tempdir();
    let p = start(dir.path());
    // datasize 8; key_len 2 "AB"; val_len 200 (overruns); 2 bytes
    let pkt = [0u8, 8, 0, 0, 2, 0, b'A', b'B', 200, 0, b'x', b'y'];
    let out = p.raw(&pkt);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(p.wait_log("runs past the end", 5), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn datasize_over_buffer_size_is_refused_with_the_option_to_raise() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--buffer-size", "4096"])
        .start();
    let big = "x".repeat(6000);
    let pkt = {
        let mut v = uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/"),
            ("HTTP_COOKIE", &big),
        ]);
        v.truncate(v.len()); // the whole packet is sent
        v
    };
    let out = p.raw(&pkt);
    let r = parse_http(&out).expect("a 431 answer");
    assert_eq!(r.status, 431);
    assert!(
        p.wait_log("over the 4096-byte limit (raise --buffer-size", 5),
        "{}",
        p.logs()
    );
    // regression (probe 389): the answer had no access line over uwsgi and SCGI, and
    // the WARN said only "closing".
    assert!(p.wait_log("answered 431 and closing", 5), "{}", p.logs());
    assert!(
        p.wait_log("method=- path=- status=431 bytes=", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn default_buffer_size_takes_a_64k_head() {
    let dir = tempdir();
    let p = start(dir.path());
    let big = "c".repeat(60_000);
    let resp = p.uwsgi(
        &[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/env"),
            ("HTTP_COOKIE", &big),
        ],
        b"",
    );
    let r = parse_http(&resp).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["HTTP_COOKIE"].as_str().unwrap().len(), 60_000);
}

#[test]
fn http_text_on_the_uwsgi_port_is_named_in_the_log() {
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = parse_http(&out).expect("a 400 answer explains the mistake");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("uwsgi"));
    assert!(
        p.wait_log("HTTP request received on a uwsgi socket", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn other_modifiers_are_refused() {
    let dir = tempdir();
    let p = start(dir.path());
    let mut pkt = uwsgi_packet(&[("REQUEST_METHOD", "GET")]);
    pkt[0] = 111; // uWSGI's cache modifier
    assert!(p.raw(&pkt).is_empty());
    assert!(p.wait_log("modifier1 111", 5), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn a_silent_client_does_not_block_others_and_is_closed() {
    let dir = tempdir();
    let p = start(dir.path());
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..5 {
        ok_after(&p);
    }
    // --head-timeout 1: the silent peer is closed and logged.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The 10 s read timeout only keeps a broken server from hanging the test.
    let mut buf = [0u8; 16];
    match idle.read(&mut buf) {
        Ok(0) => {}
        other => panic!(
            "expected postern to close the silent connection, got {other:?}\n{}",
            p.logs()
        ),
    }
    // Closed for the head timeout, not for something else.
    assert!(p.wait_log("no complete request head", 5), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn a_client_gone_mid_body_is_logged_and_the_app_not_called() {
    let dir = tempdir();
    let p = start(dir.path());
    let mut s = p.addr.connect().unwrap();
    let mut pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/echo"),
        ("CONTENT_LENGTH", "100000"),
    ]);
    pkt.extend_from_slice(&[7u8; 1000]);
    s.write_all(&pkt).unwrap();
    drop(s);
    assert!(
        p.wait_log("connection closed after 1000 of 100000 body bytes", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn a_client_gone_mid_spooled_body_is_logged() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--body-spool-threshold", "1k"])
        .start();
    let mut s = p.addr.connect().unwrap();
    let mut pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/echo"),
        ("CONTENT_LENGTH", "50000"),
    ]);
    pkt.extend_from_slice(&[7u8; 20000]);
    s.write_all(&pkt).unwrap();
    drop(s);
    assert!(p.wait_log("of 50000 body bytes", 5), "{}", p.logs());
    ok_after(&p);
}

// A CONTENT_LENGTH that is not a length (negative, an exponent, past 2^63) is answered
// 400, as over FastCGI, with a log line naming the peer and the value.
// regression: closed without an answer (hostile6 LOW).
#[test]
fn bad_content_length_is_refused() {
    let dir = tempdir();
    let p = start(dir.path());
    for cl in ["-5", "1e3", "99999999999999999999"] {
        let out = p.uwsgi(
            &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", cl)],
            b"short",
        );
        let r =
            parse_http(&out).unwrap_or_else(|| panic!("{cl}: no answer: {:?}\n{}", out, p.logs()));
        assert_eq!(r.status, 400, "{cl}");
        assert!(r.text().contains("CONTENT_LENGTH"), "{cl}: {}", r.text());
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

#[test]
fn missing_request_method_answers_400_with_a_hint() {
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(&[("PATH_INFO", "/")], b"");
    assert_eq!(parse_http(&out).unwrap().status, 400);
    assert!(p.wait_log("include uwsgi_params", 5));
    ok_after(&p);
}

#[test]
fn max_body_answers_413() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--max-body", "1k"])
        .start();
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", "5000"),
        ],
        &[1u8; 5000],
    );
    assert_eq!(parse_http(&out).unwrap().status, 413);
    assert!(p.wait_log("--max-body", 5));
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", "1000"),
        ],
        &[1u8; 1000],
    );
    assert_eq!(parse_http(&out).unwrap().body, vec![1u8; 1000]);
}

#[test]
fn response_is_a_status_line_and_closes() {
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")], b"");
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let r = parse_http(&out).unwrap();
    assert_eq!(
        r.header("Content-Length"),
        Some("6"),
        "a one-item list gets a Content-Length"
    );
    assert!(r.header("Transfer-Encoding").is_none());
    assert!(p.wait_log("served", 5));
}

#[test]
fn head_requests_get_headers_only() {
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(&[("REQUEST_METHOD", "HEAD"), ("PATH_INFO", "/")], b"");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 6\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");
    // regression: an app that leaves the body out for HEAD itself (returns `[]`, as
    // Bottle does) got `Content-Length: 0`, which says the GET's body is empty.
    let out = p.uwsgi(
        &[("REQUEST_METHOD", "HEAD"), ("PATH_INFO", "/head-empty")],
        b"",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("Content-Length"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    let out = p.uwsgi(
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/head-empty")],
        b"",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\r\nContent-Length: 7\r\n"), "{text}");
}

#[test]
fn modifier_30_strips_script_name() {
    let dir = tempdir();
    let p = start(dir.path());
    let mut pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", "/app"),
        ("PATH_INFO", "/app/env"),
    ]);
    pkt[0] = 30;
    let r = parse_http(&p.raw(&pkt)).unwrap();
    let env = r.json();
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/env");
}

#[test]
fn a_query_sent_with_raw_bytes_reaches_the_app_percent_encoded() {
    // regression: `q=é` typed into curl reached QUERY_STRING as its raw UTF-8 bytes
    // (latin-1 text "q=Ã©"), and Django's get_full_path() and APPEND_SLASH redirect
    // encoded that text again: `?q=%C3%83%C2%A9`, a corrupted parameter (the ASGI
    // scope's query_string was already percent-encoded).
    let dir = tempdir();
    let p = start(dir.path());
    let pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/env"),
        ("QUERY_STRING", "q=é x&r=%C3%A9+1"),
        ("REQUEST_URI", "/env?q=é x&r=%C3%A9+1"),
    ]);
    let env = parse_http(&p.raw(&pkt)).unwrap().json();
    assert_eq!(env["QUERY_STRING"], "q=%C3%A9%20x&r=%C3%A9+1");
    // REQUEST_URI stays as sent (latin-1 text of its bytes, as every variable).
    assert_eq!(env["REQUEST_URI"], "/env?q=\u{c3}\u{a9} x&r=%C3%A9+1");
}

#[test]
fn sendfile_and_iterated_file_wrappers_are_byte_exact() {
    let dir = tempdir();
    let p = start(dir.path());
    let expected: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (s, body) = p.get("/file?size=300000");
    assert_eq!(s, 200);
    assert_eq!(body, expected);
    let (_, body) = p.get("/file?size=300000&offset=1000");
    assert_eq!(body, expected[1000..]);
    let (_, body) = p.get("/file-bytesio?size=300000");
    assert_eq!(body, expected);
    // regression: a file whose stat size is 0 but which has content (/proc) went out
    // as Content-Length 0 and an empty body.
    let (s, body) = p.get("/file-proc");
    assert_eq!(s, 200);
    assert!(
        body.starts_with(b"Name:"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn a_utf8_header_value_sent_as_latin1_goes_out_as_its_bytes() {
    // regression (audit): bytes 0x80-0x9F (RFC 9110 obs-text; every UTF-8 '\u{141}' or
    // '\u{2014}' has one) were refused as control characters: answered 500.
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/utf8-header")],
        b"",
    );
    let want = "\r\nContent-Disposition: attachment; filename=\"\u{141}\u{f3}d\u{17a}\u{2014}report.pdf\"\r\n";
    assert!(
        out.windows(want.len()).any(|w| w == want.as_bytes()),
        "{}\n{}",
        String::from_utf8_lossy(&out),
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn a_sendfile_file_shorter_than_its_size_is_cut_off_and_warned() {
    // regression (audit): a file that ends before its stat size (a sysfs file says
    // 4096; a file truncated while sent) was cut off and said only as 'client went
    // away' (INFO access line), where ASGI's pathsend warns that the file shrank.
    let sysfs = "/sys/devices/system/cpu/online";
    let size = std::fs::metadata(sysfs).map(|m| m.len()).unwrap_or(0);
    let content = std::fs::read(sysfs).map(|c| c.len() as u64).unwrap_or(0);
    if size <= content {
        eprintln!("!!!!! SKIPPING: no sysfs file whose size is over its content !!!!!");
        return;
    }
    let dir = tempdir();
    let p = start(dir.path());
    let query = format!("path={sysfs}");
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/file-path"),
            ("QUERY_STRING", &query),
        ],
        b"",
    );
    assert!(parse_http(&out).is_none(), "not whole: {out:?}");
    assert!(
        p.wait_log("wsgi.file_wrapper: the file ended before its length", 5),
        "{}",
        p.logs()
    );
    assert!(!p.logs().contains("client went away"), "{}", p.logs());
    ok_after(&p);
}

#[test]
fn a_sendfile_answer_without_a_body_gets_no_content_length() {
    // regression: wsgi.file_wrapper on a regular file answered 204 or 304 got
    // `Content-Length: <file size>` (RFC 9110 8.6: a 204 MUST NOT carry one); the
    // list path already left it out.
    let dir = tempdir();
    let p = start(dir.path());
    for status in ["204 No Content", "304 Not Modified"] {
        let query = format!("size=1000&status={status}");
        let out = p.uwsgi(
            &[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/file"),
                ("QUERY_STRING", &query),
            ],
            b"",
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{status}: {text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }
    // HEAD of a 200 keeps the length the GET would send (RFC 9110 9.3.2), and no body.
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "HEAD"),
            ("PATH_INFO", "/file"),
            ("QUERY_STRING", "size=1000"),
        ],
        b"",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 1000\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    ok_after(&p);
}

#[test]
fn content_length_is_honoured() {
    let dir = tempdir();
    let p = start(dir.path());
    // More than announced: only Content-Length bytes go out.
    let out = p.uwsgi(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/cl-long")], b"");
    let r = parse_http(&out).unwrap();
    assert_eq!(r.body, b"01234");
    assert!(out.ends_with(b"01234"), "nothing past Content-Length");
    // Fewer than announced: logged and aborted.
    let out = p.uwsgi(
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/cl-short")],
        b"",
    );
    assert!(
        parse_http(&out).is_none(),
        "a short body must not look complete"
    );
    assert!(
        p.wait_log("less body than its Content-Length", 5),
        "{}",
        p.logs()
    );
    // A list is known whole before anything is sent: a 500, not a head and a cut.
    // regression (probe 338): answered as a 200 head and an aborted connection.
    let out = p.uwsgi(
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/cl-short-list")],
        b"",
    );
    let r = parse_http(&out).expect("a whole 500");
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&out));
    assert!(
        p.wait_log("is shorter than its Content-Length (100)", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn wsgi_errors_go_to_the_log_with_the_request() {
    let dir = tempdir();
    let p = start(dir.path());
    let (s, _) = p.get("/errors");
    assert_eq!(s, 200);
    assert!(p.wait_log("hello-from-wsgi-errors", 5), "{}", p.logs());
    let line = p
        .logs()
        .lines()
        .find(|l| l.contains("hello-from-wsgi-errors"))
        .unwrap()
        .to_owned();
    assert!(line.contains("path=/errors"), "{line}");
}

#[test]
fn input_api_follows_pep_3333() {
    let dir = tempdir();
    let p = start(dir.path());
    let body = b"line one\nline two\nabcdef\nthird\nfourth\n";
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/input-api"),
            ("CONTENT_LENGTH", &body.len().to_string()),
        ],
        body,
    );
    let j = parse_http(&out).unwrap().json();
    assert_eq!(j["read0"], "");
    assert_eq!(j["readline5"], "line ");
    assert_eq!(j["readline"], "one\n");
    assert_eq!(j["read3"], "lin");
    assert_eq!(j["iter_first"], "e two\n");
    assert_eq!(
        j["readlines"],
        serde_json::json!(["abcdef\n", "third\n", "fourth\n"])
    );
    assert_eq!(j["after_end"], "");
    assert_eq!(j["readline_end"], "");
}

#[test]
fn input_api_works_on_a_spooled_body_too() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--body-spool-threshold", "10"])
        .start();
    let body = b"line one\nline two\nabcdef\nthird\nfourth\n";
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/input-api"),
            ("CONTENT_LENGTH", &body.len().to_string()),
        ],
        body,
    );
    let j = parse_http(&out).unwrap().json();
    assert_eq!(j["readline5"], "line ");
    assert_eq!(
        j["readlines"],
        serde_json::json!(["abcdef\n", "third\n", "fourth\n"])
    );
}

#[test]
fn a_large_body_is_spooled_not_kept_in_memory() {
    let dir = tempdir();
    let p = start(dir.path());
    let body: Vec<u8> = (0..8_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/digest"),
            ("CONTENT_LENGTH", &body.len().to_string()),
        ],
        &body,
    );
    let j = parse_http(&out).unwrap().json();
    assert_eq!(j["len"], 8_000_000);
    let log = p.logs();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn app_contract_mistakes_answer_500_and_say_which() {
    let dir = tempdir();
    let p = start(dir.path());
    for (path, says) in [
        ("/none", "returned None"),
        ("/str", "yielded str"),
        ("/no-start", "before calling start_response"),
        ("/bad-header", "CR, LF or another control character"),
        ("/bad-header-caught", "refused the status or headers"),
        ("/non-latin1", "outside latin-1"),
        ("/error", "ValueError: boom"),
        ("/late-error", "error before the first body byte"),
    ] {
        let out = p.uwsgi(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", path)], b"");
        let r = parse_http(&out)
            .unwrap_or_else(|| panic!("{path}: {:?}", String::from_utf8_lossy(&out)));
        assert_eq!(r.status, 500, "{path}");
        assert!(
            !String::from_utf8_lossy(&out).contains("evil"),
            "{path}: injected header passed"
        );
        assert!(
            p.wait_log(says, 5),
            "{path}: log should say {says:?}:\n{}",
            p.logs()
        );
        ok_after(&p);
    }
}

#[test]
fn second_start_response_without_exc_info_raises() {
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/twice"), (200, b"raised".to_vec()));
}

#[test]
fn system_exit_and_keyboard_interrupt_fail_one_request_only() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--threads", "2"])
        .start();
    for path in ["/sysexit", "/kbint"] {
        let (s, _) = p.get(path);
        assert_eq!(s, 500, "{path}");
        ok_after(&p);
    }
    // Log lines are written by a writer thread: wait for them.
    assert!(p.wait_log("SystemExit", 5), "{}", p.logs());
    assert!(p.wait_log("KeyboardInterrupt", 5), "{}", p.logs());
}

#[test]
fn threads_serve_concurrently() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--threads", "4"])
        .start();
    // Four requests that each wait until all four have started: they all answer 200
    // only if four threads run them at once (one by one, the first would wait in vain).
    let meet = Rendezvous::new(dir.path());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let addr = p.addr.clone();
            let target = meet.target(4, &format!("r{i}"));
            std::thread::spawn(move || {
                let (path, query) = target.split_once('?').unwrap();
                let pkt = uwsgi_packet(&[
                    ("REQUEST_METHOD", "GET"),
                    ("PATH_INFO", path),
                    ("QUERY_STRING", query),
                ]);
                let r = parse_http(&raw(&addr, &pkt)).unwrap();
                (r.status, r.text())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(
            h.join().unwrap(),
            (200, Rendezvous::met(4)),
            "the four requests did not run at once on --threads 4\n{}",
            p.logs()
        );
    }
    let env = parse_http(&p.uwsgi(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/env")], b""))
        .unwrap()
        .json();
    assert_eq!(env["wsgi.multithread"], "True");
    assert_eq!(env["wsgi.multiprocess"], "False");
}

// Response edge cases: HEAD on an endless body, 1xx, write() from other threads and after
// the request, wsgi.errors, close() raising, repeated CONTENT_LENGTH.

#[test]
fn head_on_an_endless_stream_does_not_pin_the_thread() {
    // regression: a HEAD response kept iterating the app's endless body after the headers were
    // sent, holding a Python thread for ever.
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "HEAD"),
            ("PATH_INFO", "/close-slow"),
            ("QUERY_STRING", "id=head"),
        ],
        b"",
    );
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200 OK"));
    assert!(out.ends_with(b"\r\n\r\n"), "headers only");
    ok_after(&p);
    assert_eq!(p.get("/closed?id=head").1, b"closed", "close() ran");
}

#[test]
fn interim_statuses_are_refused() {
    // regression: an app could give a 1xx status as its final response.
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/status-100").0, 500);
    assert!(p.wait_log("interim (1xx) response", 5));
}

#[test]
fn write_from_another_thread_with_a_slow_reader() {
    // regression: write() from a thread other than the request's raced on the response state
    // (not behind a lock) and could panic while the client read slowly.
    let dir = tempdir();
    let p = start(dir.path());
    let mut s = p.addr.connect().unwrap();
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/write-bg"),
        ("QUERY_STRING", "n=4194304"),
    ]))
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        std::thread::sleep(Duration::from_millis(2));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let r = parse_http(&got).unwrap();
    assert_eq!(r.body.len(), 4194304 + 3);
    assert!(r.body.ends_with(b"END"));
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

#[test]
fn a_kept_write_raises_after_its_request() {
    // regression: a write() callable kept after its request had ended did not raise.
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/keep-write").1, b"kept");
    assert_eq!(p.get("/use-kept").1, b"raised");
}

#[test]
fn a_kept_start_response_or_weakly_kept_write_never_reaches_a_later_request() {
    // regression guard: a thread reuses its start_response object (and its write) for
    // the next request only when nothing else can reach them; a kept or weakly
    // referenced one must still raise (or be gone), never write into another response.
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/keep-start-response").1, b"kept");
    assert_eq!(p.get("/use-kept-start-response"), (200, b"raised".to_vec()));
    // Saying why (regression, probe 412 NIT: 'called a second time without exc_info').
    let r = parse_http(&p.raw(&uwsgi_get("/use-kept-start-response"))).unwrap();
    assert!(
        r.header("X-Error")
            .is_some_and(|e| e.starts_with("start_response() called after its request was over")),
        "{:?}",
        r.header("X-Error")
    );
    assert_eq!(p.get("/weakref-write").1, b"kept");
    let (status, body) = p.get("/use-weakref-write");
    assert_eq!(status, 200);
    assert!(
        body == b"gone" || body == b"raised",
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    // And a plain request after them is whole.
    assert_eq!(p.get("/keep-write").1, b"kept");
    assert_eq!(p.get("/use-kept").1, b"raised");
}

#[test]
fn wsgi_errors_takes_any_str() {
    // regression: wsgi.errors.write() failed on a str that cannot be encoded as UTF-8 (a lone
    // surrogate).
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/errors-surrogate"), (200, b"ok".to_vec()));
    assert!(p.wait_log("surrogate", 5));
}

#[test]
fn close_raising_after_a_complete_body_keeps_the_response() {
    // regression: close() raising after the whole body was produced turned a complete response
    // into an error.
    let dir = tempdir();
    let p = start(dir.path());
    assert_eq!(p.get("/close-raises"), (200, b"complete body".to_vec()));
    assert!(p.wait_log("close() failing on purpose", 5));
}

#[test]
fn repeated_http_content_length_is_not_a_server_error() {
    // regression: a repeated HTTP_CONTENT_LENGTH variable was a 500 instead of the last one
    // winning.
    let dir = tempdir();
    let p = start(dir.path());
    let out = p.uwsgi(
        &[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("HTTP_CONTENT_LENGTH", "5"),
        ],
        b"hello",
    );
    assert_eq!(parse_http(&out).unwrap().body, b"hello");
}

/// Sends a GET for /hello on an open connection and reads the answer to EOF.
fn hello_on(s: &mut Box<dyn Conn>, p: &Postern) {
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/hello"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]))
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = parse_http(&out).unwrap_or_else(|| {
        panic!(
            "bad response {:?}\n{}",
            String::from_utf8_lossy(&out),
            p.logs()
        )
    });
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello\n"[..]),
        "{}",
        p.logs()
    );
}

#[test]
fn clients_that_connect_and_wait_before_sending_are_served() {
    // nginx connects, then writes: a connection accepted before its request arrives
    // waits for its first bytes (the Python threads' epoll) and is served when they
    // come, within --head-timeout; several at once, answered in any order.
    for unix in [true, false] {
        let dir = tempdir();
        let p = if unix {
            Spawn::unix(dir.path(), &testapp())
        } else {
            Spawn::tcp(dir.path(), &testapp())
        }
        .args(["--head-timeout", "30"])
        .start();
        let mut waiting: Vec<Box<dyn Conn>> = (0..3).map(|_| p.addr.connect().unwrap()).collect();
        // Long enough for postern to accept them and find nothing to read.
        std::thread::sleep(Duration::from_millis(300));
        while let Some(mut s) = waiting.pop() {
            hello_on(&mut s, &p);
        }
        ok_after(&p);
    }
}

#[test]
fn a_silent_client_is_closed_by_head_timeout_with_its_peer_in_the_log() {
    let dir = tempdir();
    let p = start(dir.path());
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // One that waits a little, then sends, is served meanwhile.
    let mut late = p.addr.connect().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    hello_on(&mut late, &p);
    // The 10 s read timeout only keeps a broken server from hanging the test.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    match idle.read(&mut buf) {
        Ok(0) => {}
        other => panic!(
            "expected postern to close the silent connection, got {other:?}\n{}",
            p.logs()
        ),
    }
    assert!(p.wait_log("no complete request head", 5), "{}", p.logs());
    let me = idle.local_addr().unwrap().to_string();
    assert!(
        p.logs()
            .lines()
            .any(|l| l.contains("no complete request head") && l.contains(&me)),
        "the timeout's line names the peer {me}\n{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn a_trickling_body_does_not_hold_the_only_python_thread() {
    // regression: a body larger than the first read is read on the Python thread while
    // it keeps arriving (no pause over 10 ms); a peer sending one byte every couple of
    // milliseconds never paused that long, so it held the only Python thread (and the
    // accept token) until its body ended, and nobody else was served.
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--threads", "1", "--read-timeout", "60"])
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/echo"),
        ("CONTENT_LENGTH", "900000"),
    ]))
    .unwrap();
    s.write_all(b"x").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Bounded: 40 s at most, well past the harness's 20 s read timeout below.
            let end = std::time::Instant::now() + Duration::from_secs(40);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < end
            {
                if s.write_all(b"x").is_err() {
                    break;
                }
                // A short busy wait, not a sleep: a sleep can overshoot the 10 ms
                // pause on a loaded machine, and the peer must never pause that long.
                let next = std::time::Instant::now() + Duration::from_micros(500);
                while std::time::Instant::now() < next {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Held, this waits for the harness's 20 s read timeout and fails.
    let (status, body) = p.get("/hello");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eq!(status, 200, "{}", p.logs());
    assert_eq!(body, b"hello\n");
}

// regression: a CONTENT_LENGTH sent twice with different values was taken (the last
// won) over uwsgi and FastCGI while SCGI refused it: two lengths for one body is a
// request-smuggling shape, refused everywhere (400, a log line with the peer); the
// same value twice counts once.
#[test]
fn a_content_length_sent_twice_with_different_values_is_refused() {
    let dir = tempdir();
    let p = start(dir.path());
    let vars = |second: &'static str| {
        uwsgi_packet(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", "3"),
            ("CONTENT_LENGTH", second),
        ])
    };
    let out = raw(&p.addr, &[vars("300"), b"abc".to_vec()].concat());
    let r = parse_http(&out).expect("an HTTP-style answer");
    assert_eq!(r.status, 400, "{}", p.logs());
    assert!(
        p.wait_log("CONTENT_LENGTH sent twice with different values", 5),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("sent twice with different values"))
        .unwrap();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    // The same value twice: one length, served.
    let out = raw(&p.addr, &[vars("3"), b"abc".to_vec()].concat());
    let r = parse_http(&out).expect("an HTTP-style answer");
    assert_eq!(
        (r.status, r.text()),
        (200, "abc".to_owned()),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

#[test]
fn a_large_first_chunk_reaches_a_slow_reader_whole_after_one_head() {
    // The head and a large first chunk leave in one vectored send; when the socket
    // takes only part of the two (a front server reading slowly), the rest follows in
    // order: the head once, then every body byte.
    let dir = tempdir();
    let p = start(dir.path());
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = p.addr.connect().unwrap();
    let len = body.len().to_string();
    let mut pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/echo"),
        ("CONTENT_LENGTH", &len),
    ]);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        std::thread::sleep(Duration::from_millis(1));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let r = parse_http(&got).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-len"), Some(len.as_str()));
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "the body arrived changed");
}

/// Sends `head` and `body` then `past` (bytes beyond the request's CONTENT_LENGTH) in
/// one write, and reads the answer to its end: what came, and whether it ended in a
/// clean EOF (not a reset).
fn send_past_the_body(addr: &Addr, head: &[u8], body: &[u8], past: &[u8]) -> (Vec<u8>, bool) {
    send_past_the_body_after(addr, 0, head, body, past)
}

/// [`send_past_the_body`], its first `first` bytes written alone 100 ms before the
/// rest (when not 0): the fast path reads them, a part of a head, and leaves the
/// connection to the slow lane.
fn send_past_the_body_after(
    addr: &Addr,
    first: usize,
    head: &[u8],
    body: &[u8],
    past: &[u8],
) -> (Vec<u8>, bool) {
    let mut s = addr.connect().unwrap();
    let mut all = head.to_vec();
    all.extend_from_slice(body);
    all.extend_from_slice(past);
    if first > 0 {
        s.write_all(&all[..first]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    s.write_all(&all[first..]).unwrap();
    let mut got = Vec::new();
    let clean = s.read_to_end(&mut got).is_ok();
    (got, clean)
}

// regression: a body longer than its CONTENT_LENGTH left bytes unread in postern's
// socket at its close, which made the close a reset: over TCP the client's read
// failed with ECONNRESET (and lost what of the response was still in postern's send
// buffer, 72 KB of 200 KB here when the client read late); over a Unix socket the
// response came, then ECONNRESET instead of EOF.
#[test]
fn a_body_longer_than_its_content_length_gets_its_whole_answer_and_a_clean_close() {
    past_the_body_answers_cleanly(&[], &[200_000, 10]);
    // regression (review-srv): a request read whole by the fast path's first read (120
    // KiB, filled exactly at the body's end) but sent on to the slow lane (its body over
    // --body-spool-threshold) lost the "that read was full" mark, so the bytes past
    // the body went unseen and the close was a reset.
    past_the_body_answers_cleanly(&["--body-spool-threshold", "1000"], &[]);
}

/// Sends each body (and one that fills the first 120 KiB read exactly with its head)
/// with bytes past its CONTENT_LENGTH, over TCP and a Unix socket, to a postern started
/// with `args`: each gets its whole answer and a clean close (EOF, not a reset).
fn past_the_body_answers_cleanly(args: &[&str], lens: &[usize]) {
    let dir = tempdir();
    let unix = dir.path().join("past.sock");
    let p = Spawn::tcp(dir.path(), &testapp())
        .arg("--uwsgi")
        .arg(format!("unix:{}", unix.display()))
        .args(args.iter().copied())
        .start();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // regression (review-mem): a head and body that exactly fill the first read (120
    // KiB) asked for no byte past the body, so the bytes past it went unseen and the
    // close was still a reset.
    let head_len = |len: usize| {
        uwsgi_packet(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", &len.to_string()),
        ])
        .len()
    };
    let filling = 120 * 1024 - head_len(120_000);
    assert_eq!(head_len(filling) + filling, 120 * 1024);
    let mut cases = vec![
        (p.addr.clone(), filling),
        (Addr::Unix(unix.clone()), filling),
    ];
    for &len in lens {
        cases.push((p.addr.clone(), len));
        cases.push((Addr::Unix(unix.clone()), len));
    }
    for (addr, len) in cases {
        let n = len.to_string();
        let head = uwsgi_packet(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", &n),
        ]);
        let (got, clean) = send_past_the_body(&addr, &head, &body[..len], b"past the body");
        let r = parse_http(&got).unwrap_or_else(|| {
            panic!(
                "{addr:?} {len}: no whole answer ({} bytes)\n{}",
                got.len(),
                p.logs()
            )
        });
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-body-len"), Some(n.as_str()));
        assert!(
            r.body == body[..len],
            "{addr:?} {len}: the body came back changed"
        );
        assert!(
            clean,
            "{addr:?} {len}: the answer ended in a reset, not EOF\n{}",
            p.logs()
        );
    }
    assert!(
        p.wait_log("the client sent bytes past its CONTENT_LENGTH", 5),
        "{}",
        p.logs()
    );
    ok_after(&p);
}

// regression (review-mem): in the slow lane, a read that filled its buffer and ended
// exactly with the body asked for no byte past it, so bytes sent past the
// CONTENT_LENGTH went unseen and the close was a reset. The fast path reads the first
// 2 bytes of the head alone; the slow lane's buffer for them then grows to 8,194 bytes,
// so its read ends with the body when the head and body are 8,194 bytes (the lengths
// around it are there in case that size moves).
#[test]
fn a_body_ending_where_the_slow_lanes_read_ends_gets_a_clean_close() {
    let dir = tempdir();
    let unix = dir.path().join("past.sock");
    let p = Spawn::tcp(dir.path(), &testapp())
        .arg("--uwsgi")
        .arg(format!("unix:{}", unix.display()))
        .start();
    let head = |len: usize| {
        uwsgi_packet(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("CONTENT_LENGTH", &len.to_string()),
        ])
    };
    let body: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
    for addr in [p.addr.clone(), Addr::Unix(unix.clone())] {
        for whole in 8_192..=8_196 {
            let len = whole - head(8_000).len();
            let (got, clean) =
                send_past_the_body_after(&addr, 2, &head(len), &body[..len], b"past the body");
            let r = parse_http(&got).unwrap_or_else(|| {
                panic!(
                    "{addr:?} {whole}: no whole answer ({} bytes)\n{}",
                    got.len(),
                    p.logs()
                )
            });
            assert_eq!(r.status, 200);
            assert!(
                r.body == body[..len],
                "{addr:?} {whole}: the body came back changed"
            );
            assert!(
                clean,
                "{addr:?} {whole}: the answer ended in a reset, not EOF\n{}",
                p.logs()
            );
        }
    }
    ok_after(&p);
}

/// An app that answers with the length of the body it read (WSGI or ASGI).
const BODY_LEN_ASGI: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    n = 0
    while True:
        m = await receive()
        n += len(m.get("body", b""))
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(n).encode()})
"#;

// regression: uWSGI's own HTTP router sends a chunked upload as
// HTTP_TRANSFER_ENCODING=chunked with no CONTENT_LENGTH (the raw chunked body after
// the head with --http-chunked-input, nothing without it); postern dropped the header
// and the app read an empty body: 200, nothing logged (WSGI and ASGI).
#[test]
fn a_chunked_body_without_content_length_is_refused_411() {
    let dir = tempdir();
    let wsgi = start(dir.path());
    let asgi_dir = tempdir();
    let asgi = Spawn::asgi_tcp(asgi_dir.path(), "body_len_app", BODY_LEN_ASGI).start();
    let chunked = |te: &str| {
        uwsgi_packet(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/echo"),
            ("HTTP_TRANSFER_ENCODING", te),
        ])
    };
    for p in [&wsgi, &asgi] {
        for (te, after) in [
            ("chunked", &b"5\r\nhello\r\n0\r\n\r\n"[..]),
            ("chunked", b""),
            ("gzip, chunked", b""),
        ] {
            let out = raw(&p.addr, &[chunked(te), after.to_vec()].concat());
            let r = parse_http(&out).expect("an HTTP-style answer");
            assert_eq!(r.status, 411, "{te} {after:?}\n{}", p.logs());
        }
        // A line can come after its client has the answer: wait for all three.
        assert!(p.wait_log_count("answered 411", 3, 5), "{}", p.logs());
        let logs = p.logs();
        let warns: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("answered 411"))
            .collect();
        assert_eq!(warns.len(), 3, "one line per request\n{logs}");
        for line in warns {
            assert!(line.contains("WARN"), "{line}");
            assert!(line.contains("peer=127.0.0.1:"), "{line}");
            assert!(line.contains("uWSGI's HTTP router"), "{line}");
        }
        // What nginx sends (de-chunked, with its length; the header still there), an
        // explicit empty body, and `identity` are framed: served.
        for (te, cl, body) in [
            ("chunked", Some("5"), &b"hello"[..]),
            ("chunked", Some("0"), b""),
            ("identity", None, b""),
        ] {
            let mut vars = vec![
                ("REQUEST_METHOD", "POST"),
                ("PATH_INFO", "/echo"),
                ("HTTP_TRANSFER_ENCODING", te),
            ];
            vars.extend(cl.map(|cl| ("CONTENT_LENGTH", cl)));
            let r = parse_http(&p.uwsgi(&vars, body)).expect("an HTTP-style answer");
            assert_eq!(r.status, 200, "{te} {cl:?}\n{}", p.logs());
        }
    }
    assert_eq!(
        parse_http(&wsgi.uwsgi(
            &[
                ("REQUEST_METHOD", "POST"),
                ("PATH_INFO", "/echo"),
                ("HTTP_TRANSFER_ENCODING", "chunked"),
                ("CONTENT_LENGTH", "5"),
            ],
            b"hello"
        ))
        .unwrap()
        .body,
        b"hello"
    );
    ok_after(&wsgi);
}

// regression (hostile LOWs): a 204's Content-Length set by the app went out (RFC 9110
// §8.6: a server must not send one; nginx passed it to clients), and
// wsgi.file_wrapper(f, -1) raised OverflowError (a 500).
#[test]
fn a_204_drops_the_apps_content_length_and_a_file_wrapper_takes_a_size_of_minus_one() {
    let dir = tempdir();
    let app = dir.path().join("no_length.py");
    std::fs::write(
        &app,
        "import io\n\ndef application(environ, start_response):\n    p = environ['PATH_INFO']\n    if p == '/fw':\n        start_response('200 OK', [('Content-Type', 'text/plain')])\n        return environ['wsgi.file_wrapper'](io.BytesIO(b'abc' * 10), -1)\n    if p == '/fw-huge':\n        start_response('200 OK', [('Content-Type', 'text/plain')])\n        return environ['wsgi.file_wrapper'](io.BytesIO(b'abc' * 10), 2 ** 70)\n    if p == '/204-twice':\n        start_response('204 No Content', [('Content-Length', '5'), ('Content-Length', '7')])\n        return []\n    lengths = {'/cl-pos1': [('X-A', '1'), ('Content-Length', '5')], '/cl-same': [('Content-Length', '5'), ('Content-Length', '5')], '/cl-differ': [('Content-Length', '5'), ('Content-Length', '6')]}\n    if p in lengths:\n        start_response('200 OK', lengths[p])\n        return [b'hello']\n    status = '204 No Content' if p == '/204' else '200 OK'\n    start_response(status, [('Content-Length', '5'), ('X-A', '1')])\n    return [b'hello']\n",
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), &app.to_string_lossy()).start();
    assert_204_drops_content_length(&p);
    // regression (probe 318): the same Content-Length twice answered 500.
    assert_one_content_length_for_one_value(&p);
    for path in ["/fw", "/fw-huge"] {
        let (status, body) = p.get(path);
        assert_eq!((status, body), (200, b"abc".repeat(10)), "{}", p.logs());
    }
    // Two Content-Lengths are refused on a 204 too (review LOW: dropping the line
    // skipped the check).
    assert_eq!(p.get("/204-twice").0, 500, "{}", p.logs());
}
