"""The plain-WSGI app of benches/soak.py (the "hello" side; the other side is
examples/flask_app.py). Every answer says which worker served it (X-Pid), so the soak
can count requests per worker.

    GET  /                       -> "Hello, World!\\n" with a Content-Length
    POST /echo                   -> "<size> <sha256 hex>\\n" of the request body, read in blocks
    GET  /stream?n=N&size=S&seed=K[&delay=D]
                                 -> N chunks of S bytes, chunk(K, i) below, no Content-Length
                                    (D seconds between chunks)
"""

import hashlib
import os
import time
from urllib.parse import parse_qs

PID = str(os.getpid()).encode()
HELLO = b"Hello, World!\n"


def chunk(seed, i, size):
    """Chunk i of a stream: its content depends on the seed and its index, so a chunk
    repeated, dropped or reordered changes the digest the client checks."""
    unit = b"%d.%d|" % (seed, i)
    return (unit * (size // len(unit) + 1))[:size]


def _int(query, name, default, lo, hi):
    try:
        return max(lo, min(hi, int(query[name][0])))
    except (KeyError, IndexError, ValueError):
        return default


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "")
    if path == "/echo" and method == "POST":
        digest = hashlib.sha256()
        size = 0
        stream = environ["wsgi.input"]
        while True:
            block = stream.read(64 * 1024)
            if not block:
                break
            size += len(block)
            digest.update(block)
        body = b"%d %s\n" % (size, digest.hexdigest().encode())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                                  ("X-Pid", PID.decode())])
        return [body]
    if path == "/stream":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        n = _int(query, "n", 5, 0, 100000)
        size = _int(query, "size", 1024, 1, 1 << 20)
        seed = _int(query, "seed", 0, 0, 1 << 62)
        try:
            delay = max(0.0, min(1.0, float(query.get("delay", ["0"])[0])))
        except ValueError:
            delay = 0.0
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("X-Accel-Buffering", "no"), ("X-Pid", PID.decode())])

        def chunks():
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                yield chunk(seed, i, size)

        return chunks()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO))),
                              ("X-Pid", PID.decode())])
    return [HELLO]
