"""WSGI app used by postern's black-box tests: one route per behaviour under test.

Plain WSGI on purpose (no framework), so each route shows exactly what a server must
do (PEP 3333). Routes are selected by PATH_INFO; see the test files for the expected
answers.
"""
import hashlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

# Request ids whose iterable's close() ran: {id: how}.
CLOSED = {}
KEPT_WRITE = None
KEPT_START_RESPONSE = None
WEAK_WRITE = None
IMPORTS = os.environ.get("TESTAPP_IMPORT_MARK")
if IMPORTS:
    with open(IMPORTS, "a") as f:
        f.write(f"{os.getpid()}\n")


def qs(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def text(start_response, body, status="200 OK", extra=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *extra])
    return [body]


def as_json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """An iterable whose close() is recorded under an id."""

    def __init__(self, rid, chunks, delay=0.0, fail_at=None):
        self.rid, self.chunks, self.delay, self.fail_at = rid, chunks, delay, fail_at

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if self.fail_at is not None and i == self.fail_at:
                raise RuntimeError("failing on purpose mid-body")
            if self.delay:
                time.sleep(self.delay)
            yield c

    def close(self):
        CLOSED[self.rid] = "closed"


def simple_app(environ, start_response):
    # wsgiref.validate only allows read(n), with exactly one argument.
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body) + 3))])
    return [b"ok:", body]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = qs(environ)
    if path.startswith("/validate"):
        return validator(simple_app)(environ, start_response)
    if path == "/env" or path.startswith("/env/") or path.startswith("/mount"):
        env = {}
        for k, v in environ.items():
            if isinstance(v, str):
                env[k] = v
            elif isinstance(v, (bool, int, tuple)):
                env[k] = repr(v)
        env["wsgi.input.type"] = type(environ["wsgi.input"]).__name__
        env["_types_ok"] = all(
            type(k) is str and (type(v) is str or k.startswith("wsgi.") or k.startswith("postern."))
            for k, v in environ.items()
        )
        return as_json(start_response, env)
    if path == "/read-then-bug":
        # Catches the body read's OSError, then fails with a bug of its own.
        try:
            environ["wsgi.input"].read()
        except OSError:
            pass
        raise ValueError("a bug of the app after its body read failed")
    if path == "/echo":
        data = environ["wsgi.input"].read()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("X-Body-Len", str(len(data))),
                ("X-SHA256", hashlib.sha256(data).hexdigest()),
            ],
        )
        return [data]
    if path == "/digest":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
        return as_json(start_response, {"len": n, "sha256": h.hexdigest()})
    if path == "/input-api":
        inp = environ["wsgi.input"]
        out = {"read0": inp.read(0).decode()}
        out["readline5"] = inp.readline(5).decode()
        out["readline"] = inp.readline().decode()
        out["read3"] = inp.read(3).decode()
        out["iter_first"] = next(iter(inp)).decode()
        out["readlines"] = [l.decode() for l in inp.readlines()]
        out["after_end"] = inp.read().decode()
        out["readline_end"] = inp.readline().decode()
        return as_json(start_response, out)
    if path == "/unread-body":
        # Answers without reading its (possibly large) body.
        return text(start_response, "did not read\n")
    if path == "/stream":
        n, delay = int(q.get("n", 5)), float(q.get("delay", 0.05))

        def gen():
            for i in range(n):
                yield f"chunk {i}\n".encode()
                time.sleep(delay)

        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return gen()
    if path == "/zeros":
        # A large download made cheaply (64 KiB parts), for clients that leave early.
        size, part = int(q.get("size", 1 << 20)), b"\0" * 65536
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return (part[: min(65536, size - i)] for i in range(0, size, 65536))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written 1\n")
        write(b"written 2\n")
        return [b"returned\n"]
    if path == "/cookies":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")],
        )
        return [b"two cookies\n"]
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain"), ("X-Exc", "1")], sys.exc_info())
        return [b"replaced by exc_info\n"]
    if path == "/exc-info-after-sent":

        def gen():
            yield b"first chunk\n"
            try:
                raise ValueError("too late")
            except ValueError:
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/error":
        raise ValueError("boom: an app error on purpose")
    if path == "/late-error":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            raise RuntimeError("error before the first body byte")
            yield b""

        return gen()
    if path == "/error-after-headers":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(q.get("id", "x"), [b"part one\n", b"part two\n"], fail_at=1)
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(q["id"], [b"a\n", b"b\n"])
    if path == "/close-error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(q["id"], [b"a\n", b"b\n"], fail_at=0)
    if path == "/close-slow":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return Tracked(q["id"], [b"tick\n"] * 200, delay=0.05)
    if path == "/closed":
        return text(start_response, CLOSED.get(q["id"], "no"))
    if path == "/none":
        start_response("200 OK", [])
        return None
    if path == "/str":
        start_response("200 OK", [])
        return ["a str, not bytes"]
    if path == "/no-start":
        return [b"never called start_response"]
    if path == "/twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("200 OK", [])
        except AssertionError:
            return [b"raised"]
        return [b"did not raise"]
    if path == "/sysexit":
        raise SystemExit(3)
    if path == "/kbint":
        raise KeyboardInterrupt
    if path == "/bad-header":
        start_response("200 OK", [("X-Injected", "a\r\nSet-Cookie: evil=1")])
        return [b"should not be sent"]
    if path == "/bad-header-caught":
        try:
            start_response("200 OK", [("X-Injected", "a\r\nSet-Cookie: evil=1")])
        except ValueError:
            pass
        return [b"should not be sent"]
    if path == "/utf8-header":
        # UTF-8 bytes as latin-1 text (PEP 3333's way to send bytes): '\u0141' is
        # C5 81, '\u2014' E2 80 94 (bytes 0x80-0x9F, RFC 9110 obs-text).
        name = "\u0141\u00f3d\u017a\u2014report.pdf".encode("utf-8").decode("latin-1")
        return text(start_response, "ok\n", "200 OK", [("Content-Disposition", 'attachment; filename="%s"' % name)])
    if path == "/non-latin1":
        start_response("200 OK", [("X-Euro", "\u20ac")])
        return [b"should not be sent"]
    if path == "/cl-short":
        start_response("200 OK", [("Content-Length", "100")])
        return Tracked(q.get("id", "s"), [b"only ten b"])
    if path == "/cl-short-list":
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only ten b"]
    if path == "/cl-long":
        start_response("200 OK", [("Content-Length", "5")])
        return Tracked(q.get("id", "l"), [b"0123456789"])
    if path == "/file":
        size = int(q.get("size", 100000))
        f = tempfile.TemporaryFile()
        f.write(bytes(i % 251 for i in range(size)))
        f.seek(int(q.get("offset", 0)))
        start_response(q.get("status", "200 OK"), [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/file-proc":
        # A regular file whose stat size is 0 though it has content (/proc, /sys).
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open("/proc/self/status", "rb"), 8192)
    if path == "/file-path":
        # Any file, e.g. a sysfs one whose stat size (4096) is not its content's.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(q["path"], "rb"), 8192)
    if path == "/file-bytesio":
        size = int(q.get("size", 100000))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(bytes(i % 251 for i in range(size))), 4096)
    if path == "/sleep":
        time.sleep(float(q.get("s", 1)))
        return text(start_response, "slept\n")
    if path == "/status-header":
        # An app header named Status: the status is start_response's, not this.
        return text(start_response, "created\n", "201 Created", [("Status", "404 Not Found")])
    if path == "/errors":
        environ["wsgi.errors"].write("hello-from-wsgi-errors\n")
        environ["wsgi.errors"].flush()
        return text(start_response, "logged\n")
    if path == "/thread":
        return text(start_response, threading.current_thread().name)
    if path == "/pid":
        return text(start_response, str(os.getpid()))
    if path == "/pid-sleep":
        # With `pid`, only that worker sleeps (a test pins one worker's threads).
        if q.get("pid", str(os.getpid())) == str(os.getpid()):
            time.sleep(float(q.get("s", 1)))
        return text(start_response, str(os.getpid()))
    if path == "/sys":
        return as_json(
            start_response,
            {"prefix": sys.prefix, "executable": sys.executable, "path": sys.path, "env": os.environ.get("TESTAPP_ENV", "")},
        )
    if path == "/bare-status":
        # A status without its reason (PEP 3333 asks for one; uWSGI and gunicorn pass it).
        return text(start_response, "bare\n", q.get("code", "200"))
    if path == "/head-empty":
        # As Bottle does: the body left out for HEAD by the app itself.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"a body\n"]
    if path == "/status-100":
        start_response("100 Continue", [])
        return [b""]
    if path == "/regex-hog":
        import re

        # Catastrophic backtracking: runs in C for a very long time, holding the GIL.
        re.match(r"(a+)+$", "a" * 40 + "b")
        return text(start_response, "never\n")
    if path == "/marked-sleep":
        # /sleep that first makes the file `mark`: the test knows the request is in the app.
        open(q["mark"], "w").close()
        time.sleep(float(q.get("s", 1)))
        return text(start_response, "slept\n")
    if path == "/marked-regex-hog":
        # /regex-hog that first makes the file `mark`: the test knows the GIL is held.
        import re

        open(q["mark"], "w").close()
        re.match(r"(a+)+$", "a" * 40 + "b")
        return text(start_response, "never\n")
    if path == "/write-bg":
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        n = int(q.get("n", 8 << 20))

        def pump():
            for _ in range(n // 65536):
                write(b"w" * 65536)

        t = threading.Thread(target=pump)
        t.start()

        def gen():
            t.join()
            yield b"END"

        return gen()
    if path == "/keep-write":
        global KEPT_WRITE
        KEPT_WRITE = start_response("200 OK", [])
        return [b"kept"]
    if path == "/use-kept":
        try:
            KEPT_WRITE(b"late")
        except OSError:
            return text(start_response, "raised")
        return text(start_response, "no error")
    if path == "/keep-start-response":
        global KEPT_START_RESPONSE
        KEPT_START_RESPONSE = start_response
        return text(start_response, "kept")
    if path == "/use-kept-start-response":
        try:
            KEPT_START_RESPONSE("200 OK", [])(b"late")
        except (AssertionError, OSError) as e:
            return text(start_response, "raised", extra=[("X-Error", str(e))])
        return text(start_response, "no error")
    if path == "/weakref-write":
        import weakref

        global WEAK_WRITE
        WEAK_WRITE = weakref.ref(start_response("200 OK", []))
        return [b"kept"]
    if path == "/use-weakref-write":
        late = WEAK_WRITE()
        if late is None:
            return text(start_response, "gone")
        try:
            late(b"late")
        except OSError:
            return text(start_response, "raised")
        return text(start_response, "no error")
    if path == "/errors-partial":
        # A line without its newline: ended when the request no longer reaches it.
        tag = environ.get("QUERY_STRING", "")
        environ["wsgi.errors"].write("partial-" + tag)
        if environ.get("HTTP_X_GENERATOR"):
            start_response("200 OK", [("Content-Type", "text/plain")])

            def gen():
                # Refers to the environ: it lives until the body is done.
                yield b"partial\n" if environ else b""

            return gen()
        return text(start_response, "partial\n")
    if path == "/errors-surrogate":
        environ["wsgi.errors"].write("bad \udcff surrogate\n")
        return text(start_response, "ok")
    if path == "/close-raises":

        class R:
            def __iter__(self):
                return iter([b"complete body"])

            def close(self):
                raise RuntimeError("close() failing on purpose")

        start_response("200 OK", [("Content-Length", "13")])
        return R()
    if path == "/rendezvous":
        # Marks its arrival in the empty directory `dir`, then waits until `n` requests
        # have arrived there: the n requests all answer 200 only if they ran at the same
        # time, whatever the machine's speed. The wait is bounded only so that a server
        # running them one after the other gets an answer (504) instead of a hang.
        d, n = q["dir"], int(q.get("n", 2))
        me = q.get("name") or f"{os.getpid()}-{threading.get_ident()}"
        open(os.path.join(d, me), "w").close()
        deadline = time.monotonic() + float(q.get("wait", 15))
        while True:
            seen = len(os.listdir(d))
            if seen >= n:
                return text(start_response, f"met {n}\n")
            if time.monotonic() > deadline:
                return text(
                    start_response,
                    f"{me}: only {seen} of {n} requests started while it ran\n",
                    "504 Gateway Timeout",
                )
            time.sleep(0.01)
    if path == "/bulk-then-tiny":
        # `big` chunks of 40 KiB (more than a socket buffer holds, so the server's
        # writer is busy sending them), then `tiny` chunks of two bytes each.
        big, tiny = int(q.get("big", 30)), int(q.get("tiny", 10000))

        def gen():
            for i in range(big):
                yield bytes([65 + i % 26]) * 40960
            for i in range(tiny):
                yield b"%02d" % (i % 100)

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()
    if path == "/gated-stream":
        # "chunk 0", then waits for the file `gate` (the test makes it once it holds
        # chunk 0), then chunks 1..n-1: the client sees chunk 0 only if the response is
        # passed on while the app still runs. The wait is bounded only against a hang;
        # its end is said in the body.
        gate, n = q["gate"], int(q.get("n", 4))

        def gen():
            yield b"chunk 0\n"
            deadline = time.monotonic() + float(q.get("wait", 15))
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    yield b"the gate never opened\n"
                    return
                time.sleep(0.01)
            for i in range(1, n):
                yield f"chunk {i}\n".encode()

        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return gen()
    return text(start_response, "hello\n")
