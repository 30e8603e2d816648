//! The ASGI request path with the real binary over raw uwsgi, FastCGI and SCGI sockets:
//! receive's messages, send's streaming and backpressure, disconnects, errors,
//! --max-concurrency, --timeout and the graceful stop. The apps are tiny ASGI apps
//! written by each test (no framework).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use protocol_tests::harness::{
    fcgi, log_line, parse_http, sha256_hex, tempdir, uwsgi_packet, wait_file, AsgiApp, Postern,
    Spawn,
};

/// One app for every test: the path picks the behaviour. `DIR` is where it leaves
/// marks for the test to read.
fn app() -> String {
    AsgiApp::new(PRELUDE)
        .on_shutdown(r#"mark("shutdown", "done")"#)
        .http(HTTP)
}

const PRELUDE: &str = r#"
import asyncio, os, sys, hashlib

DIR = os.environ["ASGI_TEST_DIR"]
DISCONNECTS = []

def mark(name, text=""):
    # The whole text or no file: the tests read it as soon as the file exists (an
    # open() then write() can be seen empty in between under load).
    path = os.path.join(DIR, name)
    with open(path + ".part", "w") as f:
        f.write(text)
    os.replace(path + ".part", path)

async def read_all(receive):
    msgs = []
    while True:
        m = await receive()
        msgs.append(m)
        if m["type"] != "http.request" or not m.get("more_body"):
            return msgs

async def answer(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")] + list(headers)})
    await send({"type": "http.response.body", "body": body})
"#;

/// The body of `app` for the http scope.
const HTTP: &str = r#"
    path = scope["path"]
    if path == "/hello":
        await answer(send, b"Hello, ASGI!\n")
    elif path == "/mutate-message":
        m = await receive()
        seen = ",".join("%s=%r" % kv for kv in m.items())
        m["body"] = b"changed"
        m["more_body"] = True
        m["extra"] = 1
        del m["type"]
        await answer(send, seen.encode())
    elif path == "/mutate-disconnect":
        # receive() after the response: http.disconnect at once; changed after it is
        # read, and its items kept for /disconnects.
        await receive()
        await answer(send, b"sent")
        m = await receive()
        DISCONNECTS.append(",".join("%s=%r" % kv for kv in m.items()))
        m["type"] = "changed"
        m["extra"] = 1
    elif path == "/disconnects":
        await answer(send, ";".join(DISCONNECTS).encode())
    elif path == "/messages":
        msgs = await read_all(receive)
        shape = ";".join("%s:%d:%s" % (m["type"], len(m.get("body", b"")), m.get("more_body")) for m in msgs)
        await answer(send, shape.encode())
    elif path == "/sha":
        msgs = await read_all(receive)
        body = b"".join(m.get("body", b"") for m in msgs)
        await answer(send, ("%d %s %d" % (len(body), hashlib.sha256(body).hexdigest(), len(msgs))).encode())
    elif path == "/gather":
        # Two receive() calls pending at once while the body is read off the loop.
        try:
            msgs = list(await asyncio.wait_for(asyncio.gather(receive(), receive()), 10))
        except asyncio.TimeoutError:
            await answer(send, b"a receive() was never resolved", 500)
            return
        if msgs[-1].get("more_body"):
            msgs += await read_all(receive)
        body = b"".join(m.get("body", b"") for m in msgs)
        await answer(send, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode())
    elif path == "/disconnected-checks":
        # Starlette's request.is_disconnected(): a receive() cancelled at once, here
        # after the body, many times in one response.
        import gc
        await receive()
        for _ in range(int(scope["query_string"] or 1)):
            receive().cancel()
        gc.collect()
        left = sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Future) and o.cancelled())
        await answer(send, str(left).encode())
    elif path == "/from-a-thread":
        # send()/receive() called on an executor thread: as any ASGI server's
        # coroutine functions, the call only makes a coroutine; run on the loop
        # (run_coroutine_threadsafe) it works, run on another thread's loop it is refused.
        loop = asyncio.get_running_loop()
        def on_thread():
            said = []
            m = asyncio.run_coroutine_threadsafe(receive(), loop).result(5)
            said.append("%s %r" % (m["type"], m["body"]))
            try:
                asyncio.run(send({"type": "http.response.start", "status": 200, "headers": []}))
                said.append("no error")
            except Exception as e:
                said.append("%s: %s" % (type(e).__name__, e))
            except BaseException as e:
                said.append("%s (a BaseException)" % type(e).__name__)
            start = {"type": "http.response.start", "status": 200,
                     "headers": [(b"content-type", b"text/plain")]}
            asyncio.run_coroutine_threadsafe(send(start), loop).result(5)
            body = {"type": "http.response.body", "body": "\n".join(said).encode()}
            asyncio.run_coroutine_threadsafe(send(body), loop).result(5)
        await loop.run_in_executor(None, on_thread)
    elif path == "/as-tasks":
        # send() and receive() given to asyncio.create_task, as coroutines are: a
        # ready value, and a receive() that waits (for the disconnect, after the body).
        m = await asyncio.create_task(receive())
        waiting = asyncio.create_task(receive())
        await asyncio.sleep(0)
        early = waiting.done()
        await asyncio.create_task(send({"type": "http.response.start", "status": 200,
                                        "headers": [(b"content-type", b"text/plain")]}))
        await asyncio.create_task(send({"type": "http.response.body",
                                        "body": b"%s %r done early: %s" % (m["type"].encode(), m["body"], str(early).encode())}))
        last = await asyncio.wait_for(waiting, 10)
        mark("as-tasks", last["type"])
    elif path == "/named-off-loop":
        # What send() and receive() make off the loop: coroutines named as the app's
        # functions, so that one never awaited is reported under a name the app knows.
        loop = asyncio.get_running_loop()
        made = [await loop.run_in_executor(None, receive),
                await loop.run_in_executor(None, send, {"type": "http.response.start", "status": 200})]
        names = " ".join("%s %s" % (type(c).__name__, c.__qualname__) for c in made)
        for c in made:
            c.close()
        await answer(send, names.encode())
    elif path == "/task-cancelled-early":
        # A task made of receive() and cancelled before it ran, and a receive() closed
        # unawaited, both while the first chunk is being read: that chunk must go to
        # the next receive(), as nothing was received.
        t = asyncio.create_task(receive())
        r = receive()
        r.close()
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await answer(send, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode())
    elif path == "/receive-dropped-unawaited":
        # receive() called and dropped, never awaited nor closed (its chunk was there at
        # the call): the next receive() must still return it.
        r = receive()
        del r
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await answer(send, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode())
    elif path == "/waiting-receive-dropped-unawaited":
        # A receive() that waits for a chunk of a streamed body, dropped unawaited,
        # neither cancelled nor closed: the chunk must go to the next receive().
        r = receive()
        del r
        await asyncio.sleep(0.05)
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await answer(send, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode())
    elif path == "/wsgi-to-asgi":
        # asgiref's WsgiToAsgi runs a WSGI app on a thread and calls send() and
        # receive() from it (through async_to_sync).
        from asgiref.wsgi import WsgiToAsgi
        def wsgi(environ, start_response):
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"wsgi got %d bytes %s" % (len(body), hashlib.sha256(body).hexdigest().encode())]
        await WsgiToAsgi(wsgi)(scope, receive, send)
    elif path == "/impatient":
        # receive() under a short timeout, retried: a cancelled receive() must not
        # lose its chunk.
        body, n = b"", 0
        while True:
            try:
                m = await asyncio.wait_for(receive(), 0.005)
            except asyncio.TimeoutError:
                continue
            body += m.get("body", b"")
            n += 1
            if not m.get("more_body"):
                break
        await answer(send, ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode())
    elif path == "/bg-exit":
        asyncio.get_running_loop().call_soon(sys.exit, 3)
        await answer(send, b"ok")
    elif path == "/restart":
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-length", b"1"), (b"x-leak", b"first"), (b"x-bad", b"a\nb")]})
        except ValueError:
            await answer(send, b"error page body", 500)
    elif path == "/pathsend-dir":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": DIR})
        except ValueError as e:
            await send({"type": "http.response.body", "body": b"fallback: " + str("regular" in str(e)).encode()})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/big":
        n = int(scope["query_string"] or b"1024")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(n * 65536).encode())]})
        chunk = b"x" * 65536
        for i in range(n):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < n - 1})
            with open(os.path.join(DIR, "sent"), "w") as f:
                f.write(str(i + 1))
    elif path == "/disconnect":
        await read_all(receive)
        mark("waiting")
        m = await receive()
        mark("got", m["type"])
        try:
            await answer(send, b"too late")
        except OSError as e:
            mark("send", type(e).__name__ + " " + str(isinstance(e, OSError)))
    elif path == "/raise-before":
        raise RuntimeError("boom before start")
    elif path == "/raise-after":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after start")
    elif path == "/hold":
        name = scope["query_string"].decode()
        mark("arrived-" + name)
        while not os.path.exists(os.path.join(DIR, "release")):
            await asyncio.sleep(0.02)
        await answer(send, name.encode())
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"0.5"))
        await answer(send, b"slept")
    elif path == "/sync":
        n = await asyncio.get_running_loop().run_in_executor(None, lambda: 6 * 7)
        await answer(send, str(n).encode())
    elif path == "/stuck":
        await asyncio.sleep(3600)
    elif path == "/head":
        await answer(send, b"twelve bytes")
    elif path == "/headers":
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"x-one", b"1"), (b"connection", b"close"), (b"upgrade", b"h2c")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": True})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False}) if False else None
        await send({"type": "http.response.body", "body": b"!"})
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nb")]})
    elif path == "/header-shapes":
        # Every shape of headers an app may give, and the errors of wrong ones.
        errors = []
        for bad in ([(b"a",)], [b"ab"], [(b"x", "str")], 5, [(b"x", b"1", b"2")],
                    [(b"bad name", b"v")], [[b"x-nl", b"a\nb"]], [(b"x-del", b"\x7f")]):
            try:
                await send({"type": "http.response.start", "status": 200, "headers": bad})
                errors.append("accepted")
            except (TypeError, ValueError) as e:
                errors.append(type(e).__name__)
        await send({"type": "http.response.start", "status": 200, "headers": (
            [b"x-list", b"1"], (b"x-tuple", bytearray(b"2")), (p for p in (b"x-gen", b"3")),
            (b"x-latin", b"caf\xe9"), (b"x-utf8", "\u0141\u00f3d\u017a\u2014".encode()),
            (b"content-type", b"text/plain"))})
        await send({"type": "http.response.body", "body": ",".join(errors).encode()})
    elif path == "/ready-by-hand":
        # What receive() and send() return when their value is ready, driven by hand
        # (as a generator-based framework or `yield from` drives it).
        said = []
        r = receive()
        it = r.__await__()
        said.append("%s %s" % (type(r).__name__, it is r))
        for _ in range(2):
            try:
                next(it)
            except StopIteration as e:
                said.append(repr(e.value.get("type") if e.value else e.value))
        s = send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            s.send(None)
        except StopIteration as e:
            said.append(repr(e.value))
        said.append(repr(s.close()))
        try:
            type(s)()
        except TypeError:
            said.append("not instantiable")
        await asyncio.ensure_future(send({"type": "http.response.body", "body": " ".join(said).encode()}))
    elif path == "/memoryview":
        # As Starlette's Response(memoryview(...)) sends it: a slice of a buffer.
        await answer(send, memoryview(bytearray(b"0123456789" * 10))[:25])
    elif path == "/body-shapes":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        buf = bytearray(b"abc")
        await send({"type": "http.response.body", "body": buf, "more_body": True})
        buf[:] = b"XYZ"  # changed once send returned: what went out stays
        big = bytearray(b"m" * 70000)
        await send({"type": "http.response.body", "body": memoryview(big), "more_body": True})
        big[:] = b"M" * 70000
        await send({"type": "http.response.body", "body": memoryview(b"a.c.e.")[::2], "more_body": True})
        errors = []
        for bad in ("str", 5, [b"x"]):
            try:
                await send({"type": "http.response.body", "body": bad, "more_body": True})
                errors.append("accepted")
            except TypeError as e:
                errors.append(str(e).split(",")[0])
        await send({"type": "http.response.body", "body": ("|" + ";".join(errors)).encode()})
    elif path.startswith("/status-index/"):
        # Not an int, but has __index__, as numpy.int64 (uvicorn takes it).
        class Index:
            def __init__(self, n):
                self.n = n
            def __index__(self):
                return self.n
        await answer(send, b"", Index(int(path[14:])))
    elif path.startswith("/status-bad-header/"):
        await send({"type": "http.response.start", "status": int(path[19:]),
                    "headers": [(b"x-bad", b"a\nb")]})
    elif path == "/status-float":
        try:
            await send({"type": "http.response.start", "status": 200.0, "headers": []})
            said = "accepted"
        except TypeError as e:
            said = "TypeError: %s" % e
        await answer(send, said.encode())
    elif path.startswith("/status/"):
        await answer(send, b"", int(path[8:]))
    elif path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": os.path.join(DIR, "file.bin")})
    elif path == "/pathsend-relative":
        # As Starlette's FileResponse("file.bin") sends it: relative to the working
        # directory (the test's dir).
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "file.bin"})
    else:
        await answer(send, b"not found", 404)
"#;

/// Writes the app into `dir` and starts postern on it (`protocol`: uwsgi, fastcgi, scgi).
fn serve(dir: &Path, protocol: &'static str, extra: &[&str]) -> Postern {
    Spawn::asgi_tcp(dir, "asgi_core_app", &app())
        .protocol(protocol)
        .env("ASGI_TEST_DIR", dir.to_str().unwrap())
        .args(["--loop", "asyncio"])
        .args(extra.iter().copied())
        .start()
}

fn vars<'a>(method: &'a str, path: &'a str, query: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", method),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("REQUEST_URI", path),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]
}

/// A uwsgi request with a body (CONTENT_LENGTH set).
fn uwsgi_req(method: &str, path: &str, query: &str, body: &[u8]) -> Vec<u8> {
    let len = body.len().to_string();
    let mut v = vars(method, path, query);
    if !body.is_empty() {
        v.push(("CONTENT_LENGTH", &len));
    }
    let mut pkt = uwsgi_packet(&v);
    pkt.extend_from_slice(body);
    pkt
}

fn get(p: &Postern, path: &str, query: &str) -> protocol_tests::harness::Response {
    let out = p.raw(&uwsgi_req("GET", path, query, b""));
    parse_http(&out).unwrap_or_else(|| panic!("bad response {:?}", String::from_utf8_lossy(&out)))
}

/// An SCGI request (netstring head; CONTENT_LENGTH first, as the protocol asks).
fn scgi_req(path: &str) -> Vec<u8> {
    let mut head = Vec::new();
    for (k, v) in [("CONTENT_LENGTH", "0"), ("SCGI", "1")]
        .into_iter()
        .chain(vars("GET", path, ""))
    {
        head.extend_from_slice(k.as_bytes());
        head.push(0);
        head.extend_from_slice(v.as_bytes());
        head.push(0);
    }
    let mut out = format!("{}:", head.len()).into_bytes();
    out.extend_from_slice(&head);
    out.push(b',');
    out
}

/// The STDOUT of FastCGI request 1 from the raw records read.
fn fcgi_stdout(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let len = u16::from_be_bytes([b[4], b[5]]) as usize;
        let pad = b[6] as usize;
        if b[1] == fcgi::STDOUT {
            out.extend_from_slice(&b[8..8 + len]);
        }
        b = &b[8 + len + pad..];
    }
    out
}

/// A FastCGI POST of `body` to `path` without CONTENT_LENGTH, its STDIN sent in records
/// of `piece` bytes `pause` apart; the response's STDOUT as text.
fn fcgi_post_in_pieces(
    p: &Postern,
    path: &str,
    body: &[u8],
    piece: usize,
    pause: Duration,
) -> String {
    let v = vars("POST", path, "");
    let mut s = p.addr.connect().unwrap();
    s.write_all(&fcgi::begin(1, 1, false)).unwrap();
    s.write_all(&fcgi::record(fcgi::PARAMS, 1, &fcgi::pairs(&v)))
        .unwrap();
    s.write_all(&fcgi::record(fcgi::PARAMS, 1, b"")).unwrap();
    for c in body.chunks(piece) {
        s.write_all(&fcgi::record(fcgi::STDIN, 1, c)).unwrap();
        std::thread::sleep(pause);
    }
    s.write_all(&fcgi::record(fcgi::STDIN, 1, b"")).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8(fcgi_stdout(&out)).unwrap()
}

#[test]
fn hello_is_served_over_uwsgi_fastcgi_and_scgi() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/hello", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, ASGI!\n");
    // A one-shot response gets its length from the server.
    assert_eq!(r.header("content-length"), Some("13"));
    assert!(p.wait_log("path=/hello status=200", 5), "{}", p.logs());

    let f = serve(dir.path(), "fastcgi", &[]);
    let out = f.raw(&fcgi::get(1, false, "/hello"));
    let stdout = String::from_utf8(fcgi_stdout(&out)).unwrap();
    assert!(stdout.starts_with("Status: 200 OK\r\n"), "{stdout}");
    assert!(stdout.ends_with("\r\n\r\nHello, ASGI!\n"), "{stdout}");

    let s = serve(dir.path(), "scgi", &[]);
    let out = String::from_utf8(s.raw(&scgi_req("/hello"))).unwrap();
    assert!(out.starts_with("Status: 200 OK\r\n"), "{out}");
    assert!(out.ends_with("Hello, ASGI!\n"), "{out}");
}

// regression (probe 347 LOW): an ASGI worker answered FCGI_GET_VALUES with 1 (threads
// × workers), though it runs up to --max-concurrency requests at once.
#[test]
fn fastcgi_get_values_says_the_asgi_worker_takes_max_concurrency_requests() {
    let dir = tempdir();
    let f = serve(dir.path(), "fastcgi", &["--max-concurrency", "37"]);
    let protocol_tests::harness::Addr::Tcp(port) = f.addr else {
        unreachable!("serve() listens on TCP")
    };
    let out = std::process::Command::new(protocol_tests::harness::postern_bin())
        .args([
            "request",
            "--get-values",
            &format!("fastcgi://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.lines().any(|l| l == "FCGI_MAX_REQS=37"), "{text}");
    assert!(text.lines().any(|l| l == "FCGI_MAX_CONNS=37"), "{text}");
}

#[test]
fn receive_gives_one_empty_message_or_the_whole_body_at_once() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/messages", "");
    assert_eq!(r.text(), "http.request:0:False");
    let out = p.raw(&uwsgi_req("POST", "/messages", "", &[b'a'; 1000]));
    assert_eq!(parse_http(&out).unwrap().text(), "http.request:1000:False");
}

// http.request messages are copies of one made once (http.rs `request_message`): what
// an app does to the one it got is not seen by the next.
#[test]
fn each_request_message_is_a_dict_of_its_own() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let empty = "type='http.request',body=b'',more_body=False";
    for _ in 0..3 {
        assert_eq!(get(&p, "/mutate-message", "").text(), empty);
    }
    let out = p.raw(&uwsgi_req("POST", "/mutate-message", "", b"hello"));
    assert_eq!(
        parse_http(&out).unwrap().text(),
        "type='http.request',body=b'hello',more_body=False"
    );
    assert_eq!(get(&p, "/mutate-message", "").text(), empty);
    // http.disconnect messages are copies of one too (http.rs `disconnect_message`).
    for _ in 0..3 {
        assert_eq!(get(&p, "/mutate-disconnect", "").text(), "sent");
    }
    assert_eq!(
        get(&p, "/disconnects", "").text(),
        ["type='http.disconnect'"; 3].join(";")
    );
}

#[test]
fn a_spooled_body_arrives_in_chunks_with_its_bytes_intact() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &["--body-spool-threshold", "64K"]);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = p.raw(&uwsgi_req("POST", "/sha", "", &body));
    let text = parse_http(&out).unwrap().text();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], "3000000");
    assert_eq!(parts[1], sha256_hex(&body));
    // More than one message: read off the loop thread, a chunk at a time.
    assert!(parts[2].parse::<u32>().unwrap() > 1, "{text}");
}

#[test]
fn a_fastcgi_body_streamed_in_stdin_records_reaches_the_app_whole() {
    let dir = tempdir();
    let p = serve(dir.path(), "fastcgi", &[]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    // No CONTENT_LENGTH: the body is read as it comes (nginx with request buffering off).
    let stdout = fcgi_post_in_pieces(&p, "/sha", &body, 8192, Duration::from_micros(200));
    let expect = format!("300000 {}", sha256_hex(&body));
    assert!(stdout.contains(&expect), "{stdout}");
}

// regression: a receive() cancelled while its chunk was being read (asyncio.wait_for
// timing out) lost that chunk; the app saw a short body and answered 200.
#[test]
fn a_cancelled_receive_loses_no_body() {
    let dir = tempdir();
    let p = serve(dir.path(), "fastcgi", &[]);
    let body: Vec<u8> = (0..160_000u32).map(|i| (i % 249) as u8).collect();
    let stdout = fcgi_post_in_pieces(&p, "/impatient", &body, 8000, Duration::from_millis(20));
    let expect = format!("160000 {}", sha256_hex(&body));
    assert!(stdout.contains(&expect), "{stdout}");
}

// regression: R14, two receive() calls pending at once while a spooled body was read
// off the loop: the second took the first's place and the first never resolved (the
// task hung for ever).
#[test]
fn receive_calls_pending_at_once_get_the_body_chunks_in_order() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &["--body-spool-threshold", "64K"]);
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 247) as u8).collect();
    let out = p.raw(&uwsgi_req("POST", "/gather", "", &body));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.text(), format!("1000000 {}", sha256_hex(&body)));
}

// regression: R9b, receive() futures the app cancelled (Starlette's is_disconnected())
// were kept until the response ended: 200k checks in one SSE response grew RSS by 65 MiB.
#[test]
fn cancelled_receive_calls_after_the_body_are_not_kept() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/disconnected-checks", "5000");
    let left: usize = r.text().parse().unwrap();
    assert!(left <= 1, "{left} cancelled receive() futures still held");
}

// regression: R15, send() or receive() called on another thread panicked in pyo3 (a
// PanicException, a BaseException, into the app and a Rust panic on stderr).
// regression: then it raised a RuntimeError at the call, so asgiref's WsgiToAsgi,
// a2wsgi and `asyncio.run_coroutine_threadsafe(send(m), loop)` answered 500 (probe2 F1):
// the call off the loop now makes a coroutine that runs once awaited on the loop.
#[test]
fn send_and_receive_called_on_another_thread_run_on_the_loop() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let out = p.raw(&uwsgi_req("POST", "/from-a-thread", "", b"abc"));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    let said = r.text();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert_eq!(lines[0], "http.request b'abc'", "{said}");
    assert!(
        lines[1]
            .starts_with("RuntimeError: send() or receive() awaited off the worker's event loop"),
        "{said}"
    );
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

// regression: probe2 F2: send() and receive() returned awaitables that are not
// coroutines, so asyncio.create_task(send(m)) raised TypeError (a 500).
#[test]
fn send_and_receive_can_be_given_to_create_task() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let out = p.raw(&uwsgi_req("POST", "/as-tasks", "", b"xyz"));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(r.text(), "http.request b'xyz' done early: False");
    assert!(wait_file(&dir.path().join("as-tasks"), 10), "{}", p.logs());
    let last = std::fs::read_to_string(dir.path().join("as-tasks")).unwrap();
    assert_eq!(last, "http.disconnect");
}

// regression: review-offloop: a task made of receive() and cancelled before it ran
// (or a receive() closed unawaited) left its future waiting in the exchange, which gave
// it the next body chunk: the app lost 256 KiB of a spooled body.
#[test]
fn a_receive_task_cancelled_before_it_ran_loses_no_body() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &["--body-spool-threshold", "64K"]);
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let out = p.raw(&uwsgi_req("POST", "/task-cancelled-early", "", &body));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(r.text(), format!("1000000 {}", sha256_hex(&body)));
}

// regression: review-offloop (open MEDIUM): with a body already whole, receive()'s
// value is ready at the call, and a task made of it cancelled before its first step
// (throw) dropped the message: the app then waited for a body that never came.
#[test]
fn a_ready_receive_cancelled_before_it_ran_gives_its_body_back() {
    bodies_arrive_whole("/task-cancelled-early", &[b"xyz", &[7u8; 20_000]]);
}

/// POSTs each body to `path` (an app route answering the body's length and SHA-256)
/// over uwsgi: each must come back whole.
fn bodies_arrive_whole(path: &str, bodies: &[&[u8]]) {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    for body in bodies {
        let out = p.raw(&uwsgi_req("POST", path, "", body));
        let r = parse_http(&out).unwrap();
        assert_eq!(r.status, 200, "{}", p.logs());
        assert_eq!(r.text(), format!("{} {}", body.len(), sha256_hex(body)));
    }
}

// regression: review-last (review of bc57993): a receive() whose message was there at
// the call, dropped unawaited and unclosed, lost it (the Ready's dealloc dropped it): the
// app then waited for a body that never came, where an `async def receive` would not
// have run.
#[test]
fn a_ready_receive_dropped_unawaited_gives_its_body_back() {
    bodies_arrive_whole("/receive-dropped-unawaited", &[b"", b"xyz", &[7u8; 20_000]]);
}

// regression: review-last: a receive() waiting for a chunk (a future), dropped unawaited
// and neither cancelled nor closed, stayed among the waiters and took the next chunk
// with it: a 3 MB body reached the app 262,144 bytes short, its last message still
// saying more_body False.
#[test]
fn a_waiting_receive_dropped_unawaited_loses_no_body() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = p.raw(&uwsgi_req(
        "POST",
        "/waiting-receive-dropped-unawaited",
        "",
        &body,
    ));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(r.text(), format!("3000000 {}", sha256_hex(&body)));
}

// reported as "coroutine 'deferred' was never awaited", a name the app never saw.
#[test]
fn send_and_receive_made_off_the_loop_are_coroutines_named_send_and_receive() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/named-off-loop", "");
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(r.text(), "coroutine receive coroutine send");
}

// regression: probe2 F1: asgiref's WsgiToAsgi answered 500 to every request.
#[test]
fn asgirefs_wsgi_to_asgi_serves_a_wsgi_app() {
    // asgiref comes with Django, in the examples' venv.
    let Some(venv) = protocol_tests::harness::example_venv() else {
        assert!(
            !protocol_tests::harness::in_ci(),
            "no venv with asgiref (examples/requirements.txt), and CI=true"
        );
        eprintln!("\n!!!!! SKIPPING: no venv with the examples' packages (python3 -m venv .venv && .venv/bin/pip install -r examples/requirements.txt) !!!!!\n");
        return;
    };
    let dir = tempdir();
    let p = Spawn::asgi_tcp(dir.path(), "asgi_core_app", &app())
        .protocol("uwsgi")
        .env("ASGI_TEST_DIR", dir.path().to_str().unwrap())
        .args(["--loop", "asyncio"])
        .venv(&venv)
        .start();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let out = p.raw(&uwsgi_req("POST", "/wsgi-to-asgi", "", &body));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(
        r.text(),
        format!("wsgi got 100000 bytes {}", sha256_hex(&body))
    );
    let out = p.raw(&uwsgi_req("GET", "/wsgi-to-asgi", "", b""));
    let r = parse_http(&out).unwrap();
    assert_eq!(r.status, 200, "{}", p.logs());
    assert!(r.text().starts_with("wsgi got 0 bytes "), "{}", r.text());
    assert!(!p.logs().contains("ERROR"), "{}", p.logs());
}

// regression: a callback of the app raising SystemExit ended the loop's run_forever and
// the worker stayed up answering nothing.
#[test]
fn a_system_exit_raised_out_of_the_loop_does_not_stop_serving() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    assert_eq!(get(&p, "/bg-exit", "").text(), "ok");
    assert_eq!(get(&p, "/hello", "").text(), "Hello, ASGI!\n");
    assert!(p.wait_log("the loop goes on", 5), "{}", p.logs());
}

#[test]
fn a_streamed_response_arrives_chunk_by_chunk_and_whole() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/stream", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    // Streamed without a length: the end of the connection ends it.
    assert_eq!(r.header("content-length"), None);
}

#[test]
fn head_204_and_headers_follow_the_wsgi_rules() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let out = p.raw(&uwsgi_req("HEAD", "/head", "", b""));
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(out.len(), end, "HEAD: no body");
    assert!(String::from_utf8_lossy(&out).contains("Content-Length: 12"));

    let r = get(&p, "/headers", "");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-one"), Some("1"));
    assert_eq!(r.header("connection"), None, "hop-by-hop header dropped");
    assert_eq!(r.header("upgrade"), None, "hop-by-hop header dropped");
    assert_eq!(r.text(), "ok!");
    assert!(p.wait_log("header=upgrade", 5), "{}", p.logs());
    // regression: `Connection: close`/`keep-alive` (Litestar sets it on every server-sent
    // event stream) was a warning on every request; dropped at debug level now.
    assert!(
        !p.logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("header=connection")),
        "{}",
        p.logs()
    );

    let r = get(&p, "/bad-header", "");
    assert_eq!(r.status, 500, "a header with CR/LF is refused");
    assert!(p.wait_log("CR, LF", 5), "{}", p.logs());
}

#[test]
fn headers_in_lists_tuples_iterators_and_bytearrays_go_out_and_wrong_shapes_raise() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let out = p.raw(&uwsgi_req("GET", "/header-shapes", "", b""));
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = &out[..end];
    for line in [
        &b"\r\nx-list: 1\r\n"[..],
        b"\r\nx-tuple: 2\r\n",
        b"\r\nx-gen: 3\r\n",
        b"\r\nx-latin: caf\xe9\r\n",
        // regression (audit): UTF-8 bytes 0x80-0x9F (obs-text) were refused.
        "\r\nx-utf8: \u{141}\u{f3}d\u{17a}\u{2014}\r\n".as_bytes(),
        b"\r\nContent-Length: 82\r\n",
    ] {
        assert!(
            head.windows(line.len()).any(|w| w == line),
            "{:?} in {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(head)
        );
    }
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        String::from_utf8_lossy(&out[end..]),
        "TypeError,TypeError,TypeError,TypeError,TypeError,ValueError,ValueError,ValueError"
    );
}

// receive()'s and send()'s ready values (src/asgi/http.rs `ReadyObject`, a C type since
// the pyo3 class's trampolines were cut) behave as an iterator that returns at once.
#[test]
fn a_ready_value_can_be_driven_by_hand() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/ready-by-hand", "");
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(
        r.text(),
        "Ready True 'http.request' None None None not instantiable"
    );
}

// regression: a memoryview or bytearray body (Starlette sends a memoryview as it is) was
// refused with a TypeError (a 500); a bytearray changed after send() returned must not
// change what goes out.
#[test]
fn memoryview_and_bytearray_bodies_go_out_and_other_types_raise() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/memoryview", "");
    assert_eq!(r.status, 200, "{}", p.logs());
    assert_eq!(r.text(), "0123456789012345678901234");
    assert_eq!(r.header("content-length"), Some("25"));

    let r = get(&p, "/body-shapes", "");
    assert_eq!(r.status, 200, "{}", p.logs());
    let text = r.text();
    let want_head = format!("abc{}ace|", "m".repeat(70000));
    assert!(
        text.starts_with(&want_head),
        "{:?}",
        &text[..text.len().min(80)]
    );
    let errors = &text[want_head.len()..];
    assert_eq!(errors.split(';').count(), 3, "{errors}");
    for e in errors.split(';') {
        assert_eq!(e, "http.response.body 'body' must be bytes", "{errors}");
    }
}

// regression: statuses missing from postern's phrase table (416, 418, 451, ...) went out
// as "416 Unknown"; nginx passes the status line to the client as it is.
#[test]
fn every_registered_status_goes_out_with_its_standard_reason_phrase() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    for (code, phrase) in [
        (203, "Non-Authoritative Information"),
        (207, "Multi-Status"),
        (226, "IM Used"),
        (300, "Multiple Choices"),
        (402, "Payment Required"),
        (408, "Request Timeout"),
        (412, "Precondition Failed"),
        (414, "URI Too Long"),
        (416, "Range Not Satisfiable"),
        (418, "I'm a Teapot"),
        (421, "Misdirected Request"),
        (428, "Precondition Required"),
        (431, "Request Header Fields Too Large"),
        (451, "Unavailable For Legal Reasons"),
        (505, "HTTP Version Not Supported"),
        (511, "Network Authentication Required"),
        (404, "Not Found"),
    ] {
        let out = p.raw(&uwsgi_req("GET", &format!("/status/{code}"), "", b""));
        let line = format!("HTTP/1.1 {code} {phrase}\r\n");
        assert!(
            out.starts_with(line.as_bytes()),
            "{code}: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(60)])
        );
    }
    // An unregistered code still goes out with a phrase nginx can pass.
    let out = p.raw(&uwsgi_req("GET", "/status/299", "", b""));
    assert!(
        out.starts_with(b"HTTP/1.1 299 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

// regression: an http.response.start status from 600 to 999 was refused with a 500 (since
// c4a70c4), though nginx, uWSGI and gunicorn pass it on; and 2**63 raised TypeError though
// it is an int. Now 600-999 go out as sent with one warning per generation; the rest still 500.
#[test]
fn a_status_from_600_to_999_goes_out_and_the_rest_past_599_is_refused() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let warning = "passed on as sent";
    for code in [600, 999] {
        let out = p.raw(&uwsgi_req("GET", &format!("/status/{code}"), "", b""));
        // The phrase a WSGI bare code without a standard one gets too.
        let line = format!("HTTP/1.1 {code} Unknown\r\n");
        assert!(
            out.starts_with(line.as_bytes()),
            "{code}: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(60)])
        );
        assert!(p.wait_log(warning, 5), "{code}:\n{}", p.logs());
    }
    assert!(p.wait_log("status=600", 10), "{}", p.logs());
    assert!(p.logs().contains("status=600"), "{}", p.logs());
    // regression: the line came under the WSGI path's target (`postern::wsgi::response`),
    // which a filter on the ASGI one (`--log-level postern::asgi=warn`) did not show.
    let logs = p.logs();
    let line = logs.lines().find(|l| l.contains(warning)).unwrap();
    assert!(line.contains("postern::asgi::http"), "{line}");
    for code in ["42", "99", "1000", "70000", "9223372036854775808"] {
        let r = get(&p, &format!("/status/{code}"), "");
        assert_eq!(r.status, 500, "{code}");
        let line = format!("status \"{code}\" is not a code from 100 to 999");
        assert!(p.wait_log(&line, 5), "{code}:\n{}", p.logs());
    }
    // The refusals were logged after the 999 was served: one warning for both.
    assert_eq!(p.logs().matches(warning).count(), 1, "{}", p.logs());
    assert_eq!(get(&p, "/status/599", "").status, 599);
}

// regression: an http.response.start status that is not an int but has __index__
// (numpy.int64, an object with only __index__) answered 500 since 68a3f75, which read it
// as an int only; uvicorn takes it.
#[test]
fn a_status_with_index_is_read_as_the_int_it_stands_for() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    for code in [200, 404, 999] {
        let r = get(&p, &format!("/status-index/{code}"), "");
        assert_eq!(r.status, code, "{}", p.logs());
    }
    // Out of range through __index__: the range error, as for an int.
    for code in ["1000", "-1", "9223372036854775808"] {
        let r = get(&p, &format!("/status-index/{code}"), "");
        assert_eq!(r.status, 500, "{code}");
        let line = format!("status \"{code}\" is not a code from 100 to 999");
        assert!(p.wait_log(&line, 5), "{code}:\n{}", p.logs());
    }
    // Neither an int nor an __index__: TypeError, raised in the app.
    assert_eq!(
        get(&p, "/status-float", "").text(),
        "TypeError: http.response.start 'status' must be an int status code, not float"
    );
}

// regression: an http.response.start of 999 whose headers were refused (answered 500)
// still logged that the 999 was 'passed on as sent': the warning came before the header
// checks.
#[test]
fn a_refused_start_with_a_status_past_599_is_not_warned_about() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let warning = "passed on as sent";
    assert_eq!(get(&p, "/status-bad-header/999", "").status, 500);
    assert!(p.wait_log("http.response.start refused", 5), "{}", p.logs());
    assert!(!p.logs().contains(warning), "{}", p.logs());
    assert_eq!(get(&p, "/status/999", "").status, 999);
    assert!(p.wait_log(warning, 5), "{}", p.logs());
}

// regression: a refused http.response.start left its headers and Content-Length
// behind for the app's second start (its error page went out with them).
#[test]
fn a_refused_start_leaves_nothing_for_the_next_one() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/restart", "");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "error page body");
    assert_eq!(r.header("x-leak"), None);
}

// regression: pathsend of a directory sent a head with Content-Length 4096, then failed
// as if the client had gone.
#[test]
fn pathsend_of_a_directory_is_refused_before_anything_is_sent() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/pathsend-dir", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fallback: True");
}

// regression (probe 328): a relative path (Starlette's FileResponse("static/x"), the
// usual FastAPI idiom, sends it as given) raised ValueError: every such GET got 500.
#[test]
fn pathsend_sends_the_file() {
    let dir = tempdir();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.path().join("file.bin"), &data).unwrap();
    let p = serve(dir.path(), "uwsgi", &[]);
    for path in ["/pathsend", "/pathsend-relative"] {
        let r = get(&p, path, "");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-length"), Some("200000"), "{path}");
        assert_eq!(sha256_hex(&r.body), sha256_hex(&data), "{path}");
    }
}

#[test]
fn an_exception_before_the_start_answers_500_with_the_traceback_in_the_request_span() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let r = get(&p, "/raise-before", "");
    assert_eq!(r.status, 500);
    assert!(
        p.wait_log("RuntimeError: boom before start", 5),
        "{}",
        p.logs()
    );
    let log = p.logs();
    let line = log_line(&log, "the app raised an exception; answered 500");
    assert!(
        line.contains("request_id=") && line.contains("path=/raise-before"),
        "{line}"
    );
    assert!(log.contains("RuntimeError: boom before start"), "{log}");
}

#[test]
fn an_exception_after_the_start_aborts_the_response() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let out = p.raw(&uwsgi_req("GET", "/raise-after", "", b""));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // Less than the 100 bytes announced: the front server sees an incomplete body.
    assert!(parse_http(&out).is_none(), "{text}");
    assert!(
        p.wait_log("after its response started; aborting", 5),
        "{}",
        p.logs()
    );
}

#[test]
fn a_client_gone_reaches_a_waiting_receive_and_a_later_send_raises_oserror() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let mut s = p.addr.connect().unwrap();
    s.write_all(&uwsgi_req("GET", "/disconnect", "", b""))
        .unwrap();
    assert!(wait_file(&dir.path().join("waiting"), 10));
    let closed = Instant::now();
    drop(s);
    assert!(wait_file(&dir.path().join("send"), 10));
    let waited = closed.elapsed();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("got")).unwrap(),
        "http.disconnect"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("send")).unwrap(),
        "ClientDisconnected True"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        p.wait_log("client went away before the response was complete", 5),
        "{}",
        p.logs()
    );
    assert!(!p.logs().contains("ERROR"), "{}", p.logs());
}

#[test]
fn a_fastcgi_client_gone_reaches_a_waiting_receive_too() {
    let dir = tempdir();
    let p = serve(dir.path(), "fastcgi", &[]);
    for keep_conn in [false, true] {
        for f in ["waiting", "got", "send"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let mut s = p.addr.connect().unwrap();
        s.write_all(&fcgi::get(1, keep_conn, "/disconnect"))
            .unwrap();
        assert!(wait_file(&dir.path().join("waiting"), 10));
        // nginx closes the connection when its client goes away (it never sends
        // FCGI_ABORT_REQUEST).
        drop(s);
        assert!(
            wait_file(&dir.path().join("send"), 10),
            "keep_conn {keep_conn}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("got")).unwrap(),
            "http.disconnect"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("send")).unwrap(),
            "ClientDisconnected True"
        );
    }
    assert!(
        p.wait_log("client went away before the response was complete", 5),
        "{}",
        p.logs()
    );
    assert!(!p.logs().contains("ERROR"), "{}", p.logs());
}

#[test]
fn a_reader_that_stops_reading_holds_send_back_and_memory_stays_bounded() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &[]);
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss();
    // 256 MiB in 64 KiB sends, to a reader that waits before reading.
    let mut s = p.addr.connect().unwrap();
    s.write_all(&uwsgi_req("GET", "/big", "4096", b"")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent: u64 = std::fs::read_to_string(dir.path().join("sent"))
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert!(
        sent < 200,
        "send did not wait for the reader: {sent} chunks sent"
    );
    // The write that waits holds no thread of the app's executor (--threads 1): sync
    // code still runs.
    assert_eq!(get(&p, "/sync", "").text(), "42");
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut peak = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("{e}"),
        }
        if total % (32 << 20) < (1 << 20) {
            peak = peak.max(rss());
        }
    }
    assert!(total > 256 << 20, "{total}");
    let grown = peak.saturating_sub(before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
}

#[test]
fn at_max_concurrency_the_worker_stops_accepting_until_a_task_ends() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &["--max-concurrency", "2"]);
    let addr = p.addr.clone();
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                protocol_tests::harness::raw(&addr, &uwsgi_req("GET", "/hold", &i.to_string(), b""))
            })
        })
        .collect();
    let arrived = |d: &Path| {
        (0..3)
            .filter(|i| d.join(format!("arrived-{i}")).exists())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived(dir.path()) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(arrived(dir.path()), 2);
    // The third waits in the listen queue while two tasks run.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrived(dir.path()), 2);
    std::fs::write(dir.path().join("release"), "").unwrap();
    for c in clients {
        let out = c.join().unwrap();
        assert_eq!(parse_http(&out).unwrap().status, 200);
    }
    assert_eq!(arrived(dir.path()), 3);
}

#[test]
fn a_task_that_never_finishes_is_caught_by_timeout() {
    let dir = tempdir();
    let p = serve(dir.path(), "uwsgi", &["--master", "--timeout", "2"]);
    let addr = p.addr.clone();
    let stuck = std::thread::spawn(move || {
        protocol_tests::harness::raw(&addr, &uwsgi_req("GET", "/stuck", "", b""))
    });
    assert!(p.wait_log("request passed --timeout", 15), "{}", p.logs());
    assert!(p.logs().contains("request=GET /stuck"), "{}", p.logs());
    // Besides the threads' stacks, the stuck task's own: the app's line that awaits.
    let line = app()
        .lines()
        .position(|l| l.contains("await asyncio.sleep(3600)"))
        .unwrap()
        + 1;
    assert!(
        p.wait_log(&format!("asgi_core_app.py\", line {line}, in app"), 5),
        "{}",
        p.logs()
    );
    // The task is named after its request.
    assert!(
        p.logs().contains("Task GET /stuck request_id="),
        "{}",
        p.logs()
    );
    let _ = stuck.join();
    assert!(p.wait_timeout_exit(10), "{}", p.logs());
    // The replacement serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = p.raw(&uwsgi_req("GET", "/hello", "", b""));
        if parse_http(&out).is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no worker serves after the timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stop_lets_the_running_task_finish_then_runs_lifespan_shutdown() {
    let dir = tempdir();
    let mut p = serve(dir.path(), "uwsgi", &[]);
    let addr = p.addr.clone();
    let slow = std::thread::spawn(move || {
        protocol_tests::harness::raw(&addr, &uwsgi_req("GET", "/sleep", "0.8", b""))
    });
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM);
    let out = slow.join().unwrap();
    assert_eq!(parse_http(&out).unwrap().text(), "slept");
    let status = p.wait_exit(10).expect("postern stops");
    assert!(status.success(), "{status}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("shutdown")).unwrap(),
        "done"
    );
}

// regression (hostile HIGH): over FastCGI, an ASGI app's last body short of its own
// Content-Length went out with END_REQUEST (complete), though the log said the
// connection was aborted: behind nginx with keep-conn the client waited for the missing
// bytes, nginx cached the short page, and the next response on that client connection
// filled them. Now no END_REQUEST follows, and the connection is aborted (as WSGI's and
// as on uwsgi and SCGI).
#[test]
fn a_last_body_short_of_its_content_length_is_not_ended_as_complete_over_fastcgi() {
    let dir = tempdir();
    let app = "async def app(scope, receive, send):\n    \
        if scope['type'] != 'http':\n        return\n    \
        path = scope['path']\n    \
        length = {'/short': 10, '/stream': 10, '/big': 100000, '/empty': 10, '/queued': 3000000}[path]\n    \
        await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', str(length).encode())]})\n    \
        if path == '/short':\n        \
            await send({'type': 'http.response.body', 'body': b'ok'})\n    \
        elif path == '/empty':\n        \
            await send({'type': 'http.response.body', 'body': bytearray(b'abcde'), 'more_body': True})\n        \
            await send({'type': 'http.response.body', 'body': b''})\n    \
        elif path == '/queued':\n        \
            first = send({'type': 'http.response.body', 'body': b'x' * 2000000, 'more_body': True})\n        \
            last = send({'type': 'http.response.body', 'body': b'y' * 100})\n        \
            await first\n        \
            await last\n    \
        elif path == '/stream':\n        \
            await send({'type': 'http.response.body', 'body': b'abc', 'more_body': True})\n        \
            await send({'type': 'http.response.body', 'body': b'de'})\n    \
        else:\n        \
            await send({'type': 'http.response.body', 'body': b'x' * 70000})\n";
    let p = Spawn::asgi_unix(dir.path(), "short_app", app)
        .protocol("fastcgi")
        .start();
    for keep in [true, false] {
        for path in ["/short", "/stream", "/big", "/empty", "/queued"] {
            let protocol_tests::harness::Addr::Unix(sock) = &p.addr else {
                unreachable!("asgi_unix listens on a Unix socket")
            };
            let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(&fcgi::get(1, keep, path)).unwrap();
            // The records up to EOF, or up to the invalid one an abort ends with.
            let mut bytes = Vec::new();
            let _ = c.read_to_end(&mut bytes);

            let mut kinds = Vec::new();
            let mut at = 0;
            while at + 8 <= bytes.len() && bytes[at] == 1 {
                let h = &bytes[at..at + 8];
                let n = u16::from_be_bytes([h[4], h[5]]) as usize;
                kinds.push((h[1], n));
                at += 8 + n + h[6] as usize;
            }
            assert!(
                !kinds.iter().any(|(k, _)| *k == fcgi::END_REQUEST),
                "keep {keep} {path}: END_REQUEST after a short body: {kinds:?}\n{}",
                p.logs()
            );
            assert!(
                kinds.iter().any(|(k, n)| *k == fcgi::STDOUT && *n > 0),
                "keep {keep} {path}: {kinds:?}\n{}",
                p.logs()
            );
        }
    }
    assert!(
        p.wait_log("less body than its Content-Length", 5),
        "{}",
        p.logs()
    );
}

// regression (hostile LOW): a `Trailer` header, which an app sending trailers sets on
// every response, was dropped with a WARN each time (trailers themselves at debug).
#[test]
fn a_trailer_header_is_dropped_with_its_trailers_without_a_warning() {
    let dir = tempdir();
    let app = "async def app(scope, receive, send):\n    \
        if scope['type'] != 'http':\n        return\n    \
        await send({'type': 'http.response.start', 'status': 200, 'trailers': True, 'headers': [(b'trailer', b'x-sum'), (b'x-keep', b'1')]})\n    \
        await send({'type': 'http.response.body', 'body': b'ok'})\n    \
        await send({'type': 'http.response.trailers', 'headers': [(b'x-sum', b'1')], 'more_trailers': False})\n";
    let p = Spawn::asgi_unix(dir.path(), "trailer_app", app).start();
    let resp = p.raw(&protocol_tests::harness::uwsgi_get("/"));
    let r = parse_http(&resp).expect("a response");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        p.logs()
    );
    let text = String::from_utf8_lossy(&resp).to_lowercase();
    assert!(
        text.contains("x-keep: 1") && !text.contains("trailer:"),
        "{text}"
    );
    let logs = p.logs();
    assert!(!logs.contains("hop-by-hop"), "{logs}");
}

// regression (hostile LOW): a 204's content-length set by the app went out (RFC 9110
// §8.6: a server must not send one; nginx passed it to clients).
#[test]
fn a_204_drops_the_apps_content_length() {
    let dir = tempdir();
    let app = "async def app(scope, receive, send):\n    \
        if scope['type'] != 'http':\n        return\n    \
        status = 200 if scope['path'] == '/ok' else 204\n    \
        twice = [(b'content-length', b'7')] if scope['path'] == '/204-twice' else []\n    \
        lengths = {'/cl-pos1': [(b'x-a', b'1'), (b'content-length', b'5')], '/cl-same': [(b'content-length', b'5'), (b'Content-Length', b'5')], '/cl-differ': [(b'content-length', b'5'), (b'content-length', b'6')]}\n    \
        headers = lengths.get(scope['path'], [(b'content-length', b'5'), (b'x-a', b'1')] + twice)\n    \
        status = 200 if scope['path'] in lengths else status\n    \
        await send({'type': 'http.response.start', 'status': status, 'headers': headers})\n    \
        await send({'type': 'http.response.body', 'body': b'hello'})\n";
    let p = Spawn::asgi_unix(dir.path(), "no_length_app", app).start();
    protocol_tests::harness::assert_204_drops_content_length(&p);
    // Two are refused on a 204 too (review LOW: dropping the line skipped the check).
    let raw = p.raw(&protocol_tests::harness::uwsgi_get("/204-twice"));
    assert!(raw.starts_with(b"HTTP/1.1 500"), "{}", p.logs());
    // regression (probe 318): the same content-length twice answered 500.
    protocol_tests::harness::assert_one_content_length_for_one_value(&p);
}
