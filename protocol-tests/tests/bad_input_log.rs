//! The log under a flood of bad input (SECURITY.md "What postern does not trust"): every
//! per-connection warning about what a peer sent (malformed, oversized, cut off, a
//! protocol error, a head not whole by --head-timeout) shares one limiter per worker:
//! the first 20 of each 10 s are named one by one (peer and reason), the rest counted
//! by reason in one summary line (said at the window's end, or at the stop).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use protocol_tests::harness::*;

/// Sends `bytes` on a new connection to `port`, half-closes when `eof`, and reads to EOF.
fn send(port: u16, bytes: &[u8], eof: bool) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(bytes);
    if eof {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

// regression (sec M3): 51,723 malformed uwsgi connections in 5 s gave 51,723 WARN lines
// (9 MiB of log); only heads that were not whole by --head-timeout were limited.
#[test]
fn a_flood_of_bad_input_names_the_first_twenty_then_sums_up_by_reason() {
    let dir = tempdir();
    let fcgi_port = free_port();
    let mut p = Spawn::tcp(dir.path(), &testapp())
        .args(["--buffer-size", "4096"])
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi_port}")])
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    // Each kind from 4 client threads at once (the flood is over sooner), one kind after
    // the other. 100 uwsgi packets that are not WSGI (modifier1 1): closed, "bad request".
    flood(100, || {
        send(port, &[1, 0, 0, 0], false);
    });
    // 40 FastCGI connections of garbage (record version 9): a protocol error.
    flood(40, || {
        send(fcgi_port, &[9, 1, 0, 1, 0, 8, 0, 0], false);
    });
    // 30 heads over --buffer-size (a uwsgi datasize of 5000): 431.
    flood(30, || {
        let out = send(port, &[0, 0x88, 0x13, 0], false);
        assert!(
            out.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    });
    // 20 heads cut off: 2 of a uwsgi header's 4 bytes, then EOF.
    flood(20, || {
        send(port, &[0, 10], true);
    });
    // A good request still answers, and is not counted.
    assert_eq!(p.get("/").0, 200, "{}", p.logs());
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some(), "{}", p.logs());
    let logs = p.logs();
    let warn: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    let is_named = |l: &&str| l.contains(" peer=127.0.0.1:");
    let is_summary = |l: &&str| l.contains("more clients dropped or refused in the last");
    let named: Vec<&str> = warn.iter().copied().filter(is_named).collect();
    // The first lines name the peer and the reason (the first 20: modifier1).
    assert!(named.len() >= 20, "{logs}");
    assert!(
        named[..20].iter().all(|l| l.contains("uwsgi modifier1 1")),
        "{named:#?}"
    );
    // Usually all 190 come within one 10 s window: 20 named, then one summary, said at
    // the stop, of the 170 others by reason. A loaded machine may take longer: then each
    // window names its first 20 and sums up the rest at its end, and the counts add up
    // the same (checked whatever the number of windows).
    let mut windows = Vec::new();
    let mut named_in_window = 0;
    for l in &warn {
        if is_named(l) {
            named_in_window += 1;
        } else if is_summary(l) {
            windows.push((named_in_window, *l));
            named_in_window = 0;
        }
    }
    assert!(!windows.is_empty(), "no summary:\n{logs}");
    assert!(named_in_window <= 20, "{logs}");
    let count = |summary: &str, what: &str| -> u64 {
        summary
            .split_once(&format!(" {what}"))
            .and_then(|(before, _)| before.rsplit([' ', ':']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut by_reason = [0u64; 3];
    let reasons = [
        "a malformed request or protocol error",
        "a request over a size limit",
        "a request cut off in the middle",
    ];
    for (named, summary) in &windows {
        assert_eq!(*named, 20, "a window names its first 20: {summary}\n{logs}");
        assert!(summary.contains("last_peer=127.0.0.1:"), "{summary}");
        assert!(!summary.contains("--head-timeout"), "{summary}");
        let each: Vec<u64> = reasons.iter().map(|r| count(summary, r)).collect();
        let total = count(summary, "more clients");
        assert_eq!(total, each.iter().sum::<u64>(), "{summary}");
        for (sum, n) in by_reason.iter_mut().zip(each) {
            *sum += n;
        }
    }
    // 140 malformed (the first 20 named), 30 oversized, 20 cut off: 190 in all.
    let summed: u64 = by_reason.iter().sum();
    assert_eq!(named.len() as u64 + summed, 190, "{by_reason:?}\n{logs}");
    for (sum, sent) in by_reason.iter().zip([140 - 20, 30, 20]) {
        assert!(*sum <= sent, "{by_reason:?}\n{logs}");
    }
    if windows.len() == 1 {
        assert_eq!(by_reason, [120, 30, 20], "{logs}");
        assert!(
            windows[0].1.contains("170 more clients"),
            "{}",
            windows[0].1
        );
    }
    let others = warn.len() - named.len() - windows.len();
    assert!(others < 9, "{others} other WARN lines:\n{logs}");
}

/// Runs `n` times `f` from 4 threads (each call on a connection of its own); returns
/// when all are done.
fn flood(n: usize, f: impl Fn() + Sync) {
    std::thread::scope(|s| {
        for t in 0..4 {
            let f = &f;
            s.spawn(move || (t..n).step_by(4).for_each(|_| f()));
        }
    });
}

/// Starts `spawn` at `--log-level warn`, which logs no `ready`: it is up once it
/// accepts a connection (a probe that sends nothing is logged at debug only).
fn start_at_warn(spawn: Spawn, dir: &std::path::Path) -> Postern {
    let addr = spawn.addr().clone();
    let log = dir.join(format!("postern-{}.log", free_port()));
    let file = std::fs::File::create(&log).unwrap();
    let child = spawn
        .args(["--log-level", "warn"])
        .command()
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("starting postern");
    let mut p = Postern {
        child,
        addr,
        log,
        dir: dir.to_owned(),
    };
    assert!(
        wait_until(60, || p.addr.connect().is_ok()),
        "postern did not start:\n{}",
        p.logs()
    );
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.logs());
    p
}

/// The WARN line of request `id` that says `needle`, once logged.
fn warn_line(p: &Postern, id: &str, needle: &str) -> String {
    let of = |logs: &str| {
        logs.lines()
            .find(|l| l.contains(needle) && l.contains(&format!("request_id={id} ")))
            .map(str::to_owned)
    };
    assert!(
        wait_until(20, || of(&p.logs()).is_some()),
        "{id}: no line '{needle}':\n{}",
        p.logs()
    );
    of(&p.logs()).unwrap()
}

// regression: at --log-level warn the request span is off, so a WARN logged in it (a
// body cut short, a FastCGI STDIN past CONTENT_LENGTH, a response the front server
// stops reading) named neither the peer nor the request: each was a bare
// 'WARN postern::server::connection: could not read the request body; closing'.
#[test]
fn at_log_level_warn_a_warning_about_a_request_names_its_peer_and_the_request() {
    let dir = tempdir();
    let (fcgi_port, scgi_port) = (free_port(), free_port());
    let p = start_at_warn(
        Spawn::tcp(dir.path(), &testapp())
            .args(["--fastcgi", &format!("127.0.0.1:{fcgi_port}")])
            .args(["--scgi", &format!("127.0.0.1:{scgi_port}")]),
        dir.path(),
    );
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    // uwsgi: a body of 3 of its 10 bytes, then EOF.
    let mut pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("REQUEST_URI", "/echo"),
        ("PATH_INFO", "/echo"),
        ("CONTENT_LENGTH", "10"),
        ("HTTP_X_REQUEST_ID", "lows-uwsgi"),
    ]);
    pkt.extend_from_slice(b"abc");
    send(port, &pkt, true);
    // SCGI: the same.
    let block: Vec<u8> = [
        ("CONTENT_LENGTH", "10"),
        ("SCGI", "1"),
        ("REQUEST_METHOD", "POST"),
        ("REQUEST_URI", "/echo"),
        ("HTTP_X_REQUEST_ID", "lows-scgi"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat())
    .collect();
    let scgi = [format!("{}:", block.len()).as_bytes(), &block, b",abc"].concat();
    send(scgi_port, &scgi, true);
    // FastCGI: STDIN longer than CONTENT_LENGTH (its excess is ignored, the request
    // served).
    let mut fcgi_req = protocol_tests::harness::fcgi::head(
        1,
        false,
        &[
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/echo"),
            ("SCRIPT_NAME", "/echo"),
            ("CONTENT_LENGTH", "3"),
            ("HTTP_X_REQUEST_ID", "lows-fcgi"),
        ],
    );
    fcgi_req.extend(protocol_tests::harness::fcgi::record(5, 1, b"abcdef"));
    fcgi_req.extend(protocol_tests::harness::fcgi::record(5, 1, b""));
    send(fcgi_port, &fcgi_req, false);
    for (id, needle) in [
        ("lows-uwsgi", "could not read the request body; closing"),
        ("lows-scgi", "could not read the request body; closing"),
        ("lows-fcgi", "STDIN longer than CONTENT_LENGTH"),
    ] {
        // Where the span would be: the id and the peer (method and path are in the
        // request's access line, which the id names).
        let line = warn_line(&p, id, needle);
        assert!(
            line.contains(&format!(" WARN request{{request_id={id} peer=127.0.0.1:")),
            "{id}: {line}"
        );
        // (Written once the thread is done with the request: maybe after the answer.)
        let has_access = |logs: &str| {
            logs.lines().any(|l| {
                l.contains(" postern::access: ")
                    && l.contains(&format!("request_id={id} "))
                    && l.contains(" method=POST path=/echo ")
            })
        };
        assert!(
            wait_until(20, || has_access(&p.logs())),
            "{id}: {}",
            p.logs()
        );
    }
    // No request span is recorded at this level.
    assert!(!p.logs().contains(" INFO request{"), "{}", p.logs());

    // An ASGI app whose response the front server stops reading (--read-timeout),
    // over a Unix socket (loopback TCP's buffers could take the whole body): the peer
    // is the listener's address.
    let asgi = "async def app(scope, receive, send):\n    if scope['type'] != 'http':\n        return\n    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n    await send({'type': 'http.response.body', 'body': b'x' * (4 << 20)})\n";
    let p = start_at_warn(
        Spawn::asgi_unix(dir.path(), "big_asgi", asgi).args(["--read-timeout", "1"]),
        dir.path(),
    );
    let mut c = p.addr.connect().unwrap();
    c.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/big"),
        ("PATH_INFO", "/big"),
        ("HTTP_X_REQUEST_ID", "lows-asgi"),
    ]))
    .unwrap();
    // Nothing is read: the socket's buffers fill, then nothing moves.
    let line = warn_line(&p, "lows-asgi", "(--read-timeout): the response is cut off");
    assert!(
        line.contains(&format!(
            " WARN request{{request_id=lows-asgi peer={}}}: postern::asgi::",
            p.addr.arg()
        )),
        "{line}"
    );
    drop(c);
}

// regression (hostile): FastCGI requests whose body the front server cut mid-way (the
// connection closed after 8 KiB of 100 KB) each logged their app's failed read at warn,
// past the limiter: 300 connections, 323 WARN lines and no summary.
#[test]
fn a_flood_of_fastcgi_bodies_cut_mid_way_is_named_twenty_times_then_summed_up() {
    cut_bodies_flood(false, false);
}

// regression (review): the same flood cut by resets instead of FINs still logged one
// unlimited WARN per request (the app's failed read) beside the lane's limited line for
// the reset.
#[test]
fn a_flood_of_fastcgi_bodies_cut_by_resets_is_named_twenty_times_then_summed_up() {
    cut_bodies_flood(true, false);
}

// The same floods to an ASGI app, whose receive() meets the cut body.
#[test]
fn a_flood_of_fastcgi_bodies_cut_mid_way_to_an_asgi_app_is_named_twenty_times_then_summed_up() {
    cut_bodies_flood(false, true);
    cut_bodies_flood(true, true);
}

/// 60 connections each send a FastCGI POST's head and 8 KiB of its 100 KB body, then
/// go: with a FIN, or (`reset`) with a reset 20 ms later (the app reading by then). At most the window's
/// 20 lines name them; the rest are summed up; a good request still answers. `asgi`:
/// to an ASGI app reading the body.
fn cut_bodies_flood(reset: bool, asgi: bool) {
    use protocol_tests::harness::fcgi;
    let dir = tempdir();
    let spawn = if asgi {
        let app = "async def app(scope, receive, send):\n    if scope['type'] != 'http':\n        return\n    while True:\n        m = await receive()\n        if m['type'] != 'http.request' or not m.get('more_body'):\n            break\n    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n    await send({'type': 'http.response.body', 'body': b'ok'})\n";
        Spawn::asgi_tcp(dir.path(), "reader", app)
    } else {
        Spawn::tcp(dir.path(), &testapp())
    };
    let mut p = spawn.protocol("fastcgi").start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut cut = post_echo_head(false, "100000");
    cut.extend(fcgi::record(fcgi::STDIN, 1, &[b'x'; 8192]));
    flood(60, || {
        use std::os::fd::AsRawFd;
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = (&c).write_all(&cut);
        if !reset {
            // Gone with the body half sent, as nginx goes when its client aborts.
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket of this test, with a valid `linger`.
        unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    });
    // A good request still answers.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let logs = still_answers_then_stops(&mut p, &mut c);
    let body_lines = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("could not read the request body"))
        .count();
    let warn_lines = logs.lines().filter(|l| l.contains(" WARN ")).count();
    // 60 cut requests: the first 20 lines of a window name them (usually 20 in all, 40
    // if the flood spans two windows; without the limit, 60 app lines, and with resets
    // about as many of the lane's), the rest are summed up (below).
    assert!(body_lines <= 40, "{body_lines} lines:\n{logs}");
    assert!(body_lines > 0, "{logs}");
    assert!(warn_lines <= 45, "{warn_lines} WARN lines:\n{logs}");
    assert!(
        logs.lines().any(
            |l| l.contains("more clients dropped or refused in the last")
                && l.contains("a request cut off in the middle")
        ),
        "no summary:\n{logs}"
    );
    // Each cut request is counted once, whether its connection's own line (a reset)
    // or its app's failed read asked the limit.
    // regression (review): with resets each was counted twice (60: "100 more").
    let counted: u64 = logs
        .lines()
        .filter(|l| l.contains("more clients dropped or refused in the last"))
        .filter_map(|l| {
            let (before, _) = l.split_once(" a request cut off in the middle")?;
            before.rsplit([' ', ':']).next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(counted > 0 && counted <= 60, "{counted} counted:\n{logs}");
}

// regression (hostile): FastCGI requests whose STDIN ran past their CONTENT_LENGTH each
// logged a WARN, unlimited: 20,000 on one kept connection wrote 20,000 lines in 1.4 s.
#[test]
fn a_flood_of_fastcgi_bodies_longer_than_their_content_length_is_summed_up() {
    use protocol_tests::harness::fcgi;
    let dir = tempdir();
    let mut p = Spawn::tcp(dir.path(), &testapp())
        .protocol("fastcgi")
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut req = post_echo_head(true, "3");
    req.extend(fcgi::record(fcgi::STDIN, 1, b"abcdef"));
    req.extend(fcgi::record(fcgi::STDIN, 1, b""));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for _ in 0..100 {
        c.write_all(&req).unwrap();
        loop {
            let rec = fcgi::read(&mut c).expect("an answer");
            if rec.kind == fcgi::END_REQUEST {
                break;
            }
        }
    }
    // A good request still answers on it.
    let logs = still_answers_then_stops(&mut p, &mut c);
    let lines = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("STDIN longer than CONTENT_LENGTH"))
        .count();
    assert!(lines > 0 && lines <= 40, "{lines} lines:\n{logs}");
    assert!(
        logs.lines().any(
            |l| l.contains("more clients dropped or refused in the last")
                && l.contains("a malformed request or protocol error")
        ),
        "no summary:\n{logs}"
    );
}

/// A good request is still answered on the kept connection `c`; then postern stops
/// (SIGTERM) and its logs are returned.
fn still_answers_then_stops(p: &mut Postern, c: &mut TcpStream) -> String {
    assert_eq!(
        fcgi::kept_get(c, "/").map(|(status, _)| status),
        Some(200),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some(), "{}", p.logs());
    p.logs()
}

/// A FastCGI `POST /echo` head (request id 1) with nginx's stock variables and
/// `content_length`.
fn post_echo_head(keep_conn: bool, content_length: &str) -> Vec<u8> {
    use protocol_tests::harness::fcgi;
    let vars = fcgi::get_vars("/echo");
    let mut v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.retain(|(k, _)| *k != "REQUEST_METHOD");
    v.push(("REQUEST_METHOD", "POST"));
    v.push(("CONTENT_LENGTH", content_length));
    fcgi::head(1, keep_conn, &v)
}

// regression (hostile): requests without REQUEST_METHOD (or with malformed variables)
// were answered 400 with one WARN line each, unlimited, on the WSGI and the ASGI path
// alike: 100 such requests wrote 100 lines.
#[test]
fn a_flood_of_requests_without_request_method_is_named_twenty_times_then_summed_up() {
    for asgi in [false, true] {
        let dir = tempdir();
        let spawn = if asgi {
            Spawn::asgi_tcp(
                dir.path(),
                "flood_app",
                "async def app(scope, receive, send):\n    \
                 await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n    \
                 await send({'type': 'http.response.body', 'body': b'ok'})\n",
            )
            .args(["--lifespan", "off"])
        } else {
            Spawn::tcp(dir.path(), &testapp())
        };
        let mut p = spawn.start();
        let no_method = uwsgi_packet(&[
            ("PATH_INFO", "/"),
            ("REQUEST_URI", "/"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ]);
        flood(100, || {
            let out = p.raw(&no_method);
            assert!(
                out.starts_with(b"HTTP/1.1 400"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        });
        // A good request still answers.
        assert_eq!(p.get("/").0, 200, "{}", p.logs());
        p.signal(libc::SIGTERM);
        assert!(p.wait_exit(30).is_some(), "{}", p.logs());
        let logs = p.logs();
        let named = logs
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("no REQUEST_METHOD"))
            .count();
        assert!(
            named > 0 && named <= 40,
            "asgi {asgi}: {named} lines:\n{logs}"
        );
        let summed: u64 = logs
            .lines()
            .filter(|l| l.contains("more clients dropped or refused in the last"))
            .map(|l| {
                assert!(l.contains("last_peer=127.0.0.1:"), "{l}");
                assert!(l.contains("a malformed request or protocol error"), "{l}");
                l.split(" more clients")
                    .next()
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(named as u64 + summed, 100, "asgi {asgi}:\n{logs}");
    }
}

// regression (probe 380): a FastCGI connection closed in the middle of a request's
// head (after BEGIN_REQUEST, its PARAMS not ended) left no line at all, where uwsgi and
// SCGI name a head cut short ("connection closed after N bytes of an incomplete
// request head").
#[test]
fn a_fastcgi_head_cut_short_by_the_front_server_s_close_is_named() {
    let dir = tempdir();
    let fcgi_port = free_port();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi_port}")])
        .start();
    let begin = [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    // A PARAMS record of 20 bytes, 10 of them sent; then BEGIN_REQUEST alone.
    let mut cut = begin.to_vec();
    cut.extend_from_slice(&[1, 4, 0, 1, 0, 20, 0, 0]);
    cut.extend_from_slice(&[4, 1, b'R', b'E', b'Q', b'U', b'E', b'S', b'T', b'_']);
    for (bytes, partial) in [(&cut[..], 18), (&begin[..], 0)] {
        assert!(send(fcgi_port, bytes, true).is_empty());
        let line = "before a request's head (BEGIN_REQUEST and its PARAMS) was whole; closing peer=127.0.0.1:";
        assert!(
            p.wait_log_count(line, if partial == 0 { 2 } else { 1 }, 10),
            "{}",
            p.logs()
        );
        assert!(
            p.logs().contains(&format!("partial_record={partial}")),
            "{}",
            p.logs()
        );
    }
}

// regression (probe 380): a flood of FastCGI management records (unknown types) whose
// replies the front server never reads was closed at --read-timeout with no line.
#[test]
fn fastcgi_management_replies_nobody_reads_are_named_at_the_read_timeout() {
    let dir = tempdir();
    let fcgi_port = free_port();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi_port}")])
        .args(["--read-timeout", "1"])
        .start();
    let mut c = TcpStream::connect(("127.0.0.1", fcgi_port)).unwrap();
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Records of type 99 on id 0: each one answered FCGI_UNKNOWN_TYPE.
    let flood: Vec<u8> = [1u8, 99, 0, 0, 0, 0, 0, 0].repeat(4096);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && c.write_all(&flood).is_ok() {}
    assert!(
        p.wait_log(
            "the front server read none of postern's replies to its FastCGI management records",
            10
        ),
        "{}",
        p.logs()
    );
}
