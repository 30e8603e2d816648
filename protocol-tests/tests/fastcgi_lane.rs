//! FastCGI connections on the slow lane, with the real binary over a raw Unix socket:
//! several requests on one multiplexed keep-conn connection (nginx and Apache never
//! multiplex: other FastCGI clients do), where the connection's input budget
//! (--fastcgi-buffer) holds it back for apps that read and drops only the body of an
//! app that stopped reading; and what the lane says when a front server stalls.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol_tests::harness::{fcgi, sha256_hex, tempdir, Addr, AsgiApp, Postern, Spawn};

/// WSGI: the length and SHA-256 of the body, read 32 KiB at a time with a pause of
/// QUERY_STRING seconds after each read; "dropped ..." when a read fails. "big": a
/// 16 MiB response after 1000 bytes of the body.
const WSGI_APP: &str = r#"
import hashlib, time

def app(environ, start_response):
    if environ.get("QUERY_STRING") == "big":
        # 1000 bytes of the body, then 16 MiB of response in one write.
        environ["wsgi.input"].read(1000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * (16 << 20)]
    slow = float(environ.get("QUERY_STRING") or 0)
    inp = environ["wsgi.input"]
    h, n = hashlib.sha256(), 0
    try:
        while True:
            b = inp.read(32768)
            if not b:
                break
            h.update(b)
            n += len(b)
            time.sleep(slow)
        body = ("%d %s" % (n, h.hexdigest())).encode()
    except OSError as e:
        body = ("dropped after %d: %s" % (n, e)).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"#;

/// ASGI: as [`WSGI_APP`], a `receive()` at a time ("big": after one `receive()`).
const ASGI_HTTP: &str = r#"
if scope["query_string"] == b"big":
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x" * (16 << 20)})
    return
slow = float(scope["query_string"] or b"0")
h, n = hashlib.sha256(), 0
while True:
    m = await receive()
    if m["type"] != "http.request":
        body = ("dropped after %d: %s" % (n, m["type"])).encode()
        break
    h.update(m.get("body", b""))
    n += len(m.get("body", b""))
    await asyncio.sleep(slow)
    if not m.get("more_body"):
        body = ("%d %s" % (n, h.hexdigest())).encode()
        break
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
await send({"type": "http.response.body", "body": body})
"#;

fn serve(dir: &Path, interface: &str, extra: &[&str]) -> Postern {
    let spawn = if interface == "asgi" {
        let src = AsgiApp::new("import asyncio, hashlib").http(ASGI_HTTP);
        Spawn::asgi_unix(dir, "mux_app", &src).args(["--loop", "asyncio"])
    } else {
        std::fs::write(dir.join("mux_app.py"), WSGI_APP).unwrap();
        Spawn::unix(dir, "mux_app:app")
            .cwd(dir)
            .args(["--threads", "2"])
    };
    spawn
        .protocol("fastcgi")
        .args(["--fastcgi-buffer", "64K"])
        .args(extra.iter().copied())
        .start()
}

/// BEGIN_REQUEST and PARAMS of a keep-conn POST of `len` bytes to `/` with `query`.
fn post(id: u16, query: &str, len: usize) -> Vec<u8> {
    let len = len.to_string();
    let vars = [
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", "/"),
        ("REQUEST_URI", "/"),
        ("QUERY_STRING", query),
        ("CONTENT_LENGTH", len.as_str()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
    ];
    fcgi::head(id, true, &vars)
}

/// Reads until both requests have ended: each one's response body.
fn two_replies(s: &mut impl std::io::Read) -> HashMap<u16, String> {
    let mut stdout: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let rec = fcgi::read(s).expect("postern answered both requests");
        match rec.kind {
            fcgi::STDOUT => stdout.entry(rec.id).or_default().extend(rec.content),
            fcgi::END_REQUEST => ended.push(rec.id),
            _ => {}
        }
    }
    stdout
        .into_iter()
        .map(|(id, out)| {
            let at = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| i + 4);
            (id, String::from_utf8_lossy(&out[at..]).into_owned())
        })
        .collect()
}

#[test]
fn a_steadily_reading_app_keeps_its_body_while_another_request_on_the_connection_waits() {
    // regression: review3's finding: on one multiplexed keep-conn connection, an app
    // reading its body steadily (10 ms per read) lost it (WARN "...this request's body
    // is dropped", its read failing) as soon as the other request's app waited for
    // its input while the connection was over --fastcgi-buffer: "not waiting at this
    // instant" was taken for "stuck".
    for interface in ["wsgi", "asgi"] {
        let dir = tempdir();
        let p = serve(dir.path(), interface, &[]);
        let Addr::Unix(path) = &p.addr else {
            unreachable!()
        };
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        const LEN: usize = 1 << 20;
        let b1: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        let b2: Vec<u8> = (0..LEN).map(|i| (i * 13 % 241) as u8).collect();
        // Request 1's app reads at once, request 2's 10 ms per read; their records
        // interleaved, as a multiplexing client sends them.
        let mut out = post(1, "0", LEN);
        out.extend(post(2, "0.01", LEN));
        for (c1, c2) in b1.chunks(32 * 1024).zip(b2.chunks(32 * 1024)) {
            out.extend(fcgi::record(fcgi::STDIN, 1, c1));
            out.extend(fcgi::record(fcgi::STDIN, 2, c2));
        }
        out.extend(fcgi::record(fcgi::STDIN, 1, b""));
        out.extend(fcgi::record(fcgi::STDIN, 2, b""));
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&out).is_ok());
        let replies = two_replies(&mut s);
        for (id, body) in [(1, &b1), (2, &b2)] {
            assert_eq!(
                replies.get(&id).map(String::as_str),
                Some(format!("{LEN} {}", sha256_hex(body)).as_str()),
                "{interface}: request {id}\n{}",
                p.logs()
            );
        }
        assert!(writer.join().unwrap(), "{interface}: postern read it all");
        assert!(
            !p.logs().contains("body is dropped"),
            "{interface}\n{}",
            p.logs()
        );
    }
}

#[test]
fn a_read_timeout_says_whether_the_front_server_also_reads_nothing() {
    // regression: review3's note: the lane's "the front server sent nothing for 3s
    // (--read-timeout)" was the same whether or not a response on the connection
    // also waited for the front server to read (a stuck write): the log pointed one
    // way only.
    for (query, reads) in [("0", true), ("big", false)] {
        let dir = tempdir();
        let p = serve(dir.path(), "asgi", &["--read-timeout", "1"]);
        let Addr::Unix(path) = &p.addr else {
            unreachable!()
        };
        // Part of a body, then nothing more; beside it on the same connection (so
        // the lane reads it), "big": a request answered 16 MiB.
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        let mut out = post(1, query, 100_000);
        out.extend(fcgi::record(fcgi::STDIN, 1, &[b'a'; 2000]));
        out.extend(post(2, "0", 100_000));
        out.extend(fcgi::record(fcgi::STDIN, 2, &[b'a'; 2000]));
        s.write_all(&out).unwrap();
        if reads {
            // Reads all that comes (nothing: the app waits for the body).
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        } else {
            // Until the response's first bytes, a byte of body 2 every 100 ms keeps
            // the lane reading (a loaded machine may take a second to start the
            // app); from them, reads what has come, 256 KiB at most, every 150 ms
            // for 0.7 s, then nothing: the lane's --read-timeout ends within 1 s of
            // those bytes, the write has made progress up to 0.7 s after them (its
            // own --read-timeout ends 0.7 s after the lane's) and then waits for
            // room. (Reading all that came until the lane's log line let a reader on
            // a loaded machine take all 16 MiB within the second now and then, and
            // an app that started late left no write at all.)
            let mut buf = vec![0u8; 64 * 1024];
            s.set_nonblocking(true).unwrap();
            let asked = Instant::now();
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(n) if n > 0 => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    r => panic!("{query}: no response ({r:?})\n{}", p.logs()),
                }
                assert!(
                    asked.elapsed() < Duration::from_secs(20),
                    "{query}: no response"
                );
                s.write_all(&fcgi::record(fcgi::STDIN, 2, b"a")).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            let first = Instant::now();
            while first.elapsed() < Duration::from_millis(700) {
                std::thread::sleep(Duration::from_millis(150));
                for _ in 0..4 {
                    if !std::io::Read::read(&mut s, &mut buf).is_ok_and(|n| n > 0) {
                        break;
                    }
                }
            }
        }
        assert!(p.wait_log("(--read-timeout)", 10), "{query}\n{}", p.logs());
        let logs = p.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("(--read-timeout)"))
            .unwrap_or_default();
        assert!(line.contains("sent nothing"), "{query}: {line}");
        assert_eq!(
            line.contains("waits for it to read"),
            !reads,
            "{query}: {line}"
        );
    }
}
