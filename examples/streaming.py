"""A plain-WSGI streaming response (no framework).

Run it from the repository root:

    postern --uwsgi unix:/run/postern.sock --socket-mode 666 examples/streaming.py

or try it without nginx:

    postern --uwsgi 127.0.0.1:3031 examples/streaming.py &
    postern request 'uwsgi://127.0.0.1:3031/?n=3&delay=0.5'

Query parameters:
    n      number of chunks (default 5)
    delay  seconds to sleep between chunks (default 0.2)

Each chunk is the line "chunk {i}\\n". The response has no Content-Length, so
nginx sends it to the client with chunked transfer encoding. The
"X-Accel-Buffering: no" header tells nginx not to buffer this response, so
every chunk reaches the client as soon as the app yields it (the same effect as
`uwsgi_buffering off;` in the nginx location, but per response).
"""

import time
from urllib.parse import parse_qs


def _param(query, name, convert, default):
    try:
        return convert(query[name][0])
    except (KeyError, IndexError, ValueError):
        return default


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    n = max(0, _param(query, "n", int, 5))
    delay = max(0.0, _param(query, "delay", float, 0.2))

    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ],
    )

    def chunks():
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            yield f"chunk {i}\n".encode()

    return chunks()
