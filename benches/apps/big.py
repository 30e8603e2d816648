"""big: a 1 MiB response in one block with a Content-Length (built once at import)."""

BODY = bytes(range(256)) * 4096
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
