"""sleep: an app that waits 1 ms on I/O per request (GIL released), as a database query
would; `/sleeps` waits 300 times and answers how much longer than 1 ms each wait took
(median and mean, in ms): the cost of a scheduling policy to an app's own waits."""

import statistics
import time

BODY = b"Hello, World!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/sleeps":
        over = []
        for _ in range(300):
            t = time.perf_counter()
            time.sleep(0.001)
            over.append((time.perf_counter() - t) * 1000 - 1)
        body = f"{statistics.median(over):.3f} {statistics.mean(over):.3f}\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    time.sleep(0.001)
    start_response("200 OK", HEADERS)
    return [BODY]
