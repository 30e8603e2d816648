"""slow: an app that waits 100 ms per request (time.sleep, GIL released): with more
connections than the workers serve in nginx's read timeout, the `overload` scenario
shows how fairly a server's queue of waiting requests is served (who is answered in
time, who gets a 504)."""

import time

BODY = b"Hello, World!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    time.sleep(0.1)
    start_response("200 OK", HEADERS)
    return [BODY]
