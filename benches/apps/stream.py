"""stream: 100 chunks of 1 KiB from a generator, no Content-Length (nginx sends the
response chunked), each chunk yielded as soon as it is made (no sleep)."""

CHUNK = b"x" * 1023 + b"\n"
COUNT = 100
HEADERS = [("Content-Type", "text/plain")]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return (CHUNK for _ in range(COUNT))
