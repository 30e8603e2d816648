"""A request-logging WSGI middleware, wrapped around an app.

Run the demo (the small app at the bottom, wrapped) from the repository root:

    postern examples/middleware.py --uwsgi 127.0.0.1:3031
    postern request uwsgi://127.0.0.1:3031/hello

and each request adds one line, in Apache's "combined" format plus the duration, to
postern's stderr next to postern's own log:

    127.0.0.1 - - [29/Nov/2026:17:40:02 +0000] "GET /hello HTTP/1.1" 200 14 "-" "-" 0.4ms

Wrap your own app the same way, e.g. in your project's wsgi.py:

    from django.core.wsgi import get_wsgi_application
    from middleware import RequestLogger

    application = RequestLogger(get_wsgi_application())

(with this file on sys.path: copy it into your project, or `--pythonpath DIR`).

What a correct middleware must do (PEP 3333), and this one does:
- pass `start_response` through, `exc_info` included, and return the server's `write`
  callable (wrapped here to count the bytes an old-style app writes through it);
- return an iterable whose `close()` calls the app's iterable's `close()`: the server
  calls `close()` once the response is sent, or when the client went away, so that is
  where the line is logged, with the real duration and byte count;
- never swallow the app's exceptions: they are logged and re-raised, so the server
  still answers 500 (or aborts a response whose headers are already out).

Trade-off: the server sees this wrapper, not the app's `wsgi.file_wrapper` object, so a
file response is read in blocks instead of going out through sendfile(2).
"""

import logging
import sys
import time

LOGGER_NAME = "request"


def _default_logger():
    logger = logging.getLogger(LOGGER_NAME)
    # One handler of our own unless the app configured logging for this logger (or
    # the root logger) itself: the lines must not vanish, nor appear twice.
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class RequestLogger:
    """WSGI middleware: one log line per request, after the response is sent."""

    def __init__(self, app, logger=None):
        self.app = app
        self.logger = logger or _default_logger()

    def __call__(self, environ, start_response):
        record = _Record(environ)

        def logging_start_response(status, headers, exc_info=None):
            record.status = status.split(" ", 1)[0]
            write = start_response(status, headers, exc_info)

            def counting_write(data):
                write(data)
                record.sent += len(data)

            return counting_write

        try:
            iterable = self.app(environ, logging_start_response)
        except BaseException as e:
            record.failed = e
            self._log(record)
            raise
        return _LoggedIterable(iterable, record, self._log)

    def _log(self, record):
        self.logger.info("%s", record.line())


class _Record:
    """What the log line says about one request."""

    def __init__(self, environ):
        self.environ = environ
        self.start = time.monotonic()
        self.when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        self.status = None
        self.sent = 0
        self.failed = None

    def line(self):
        e = self.environ
        uri = e.get("REQUEST_URI")
        if not uri:
            uri = e.get("SCRIPT_NAME", "") + e.get("PATH_INFO", "")
            if e.get("QUERY_STRING"):
                uri += "?" + e["QUERY_STRING"]
        request = f'{e.get("REQUEST_METHOD", "-")} {uri} {e.get("SERVER_PROTOCOL", "-")}'
        status = self.status or "-"
        if self.failed is not None and self.sent == 0:
            # Nothing went out yet, so the server answers 500 whatever status was chosen.
            status = "500"
        ms = (time.monotonic() - self.start) * 1000
        line = (
            f'{e.get("REMOTE_ADDR", "-")} - - [{self.when}] "{request}" {status} {self.sent or "-"} '
            f'"{e.get("HTTP_REFERER", "-")}" "{e.get("HTTP_USER_AGENT", "-")}" {ms:.1f}ms'
        )
        if self.failed is not None:
            reason = " ".join(str(self.failed).split())
            line += f" (failed: {type(self.failed).__name__}: {reason})"
        return line


class _LoggedIterable:
    """The app's iterable, counted as it goes out; logged when the server closes it."""

    def __init__(self, iterable, record, log):
        self.iterable = iterable
        self.record = record
        self.log = log

    def __iter__(self):
        self.chunks = iter(self.iterable)
        return self

    def __next__(self):
        try:
            chunk = next(self.chunks)
        except StopIteration:
            raise
        except BaseException as e:
            self.record.failed = e
            raise
        self.record.sent += len(chunk)
        return chunk

    def close(self):
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            self.log(self.record)


def hello(environ, start_response):
    """The demo app: /hello answers, anything else is a 404."""
    if environ.get("PATH_INFO") in ("/", "/hello"):
        body = b"Hello, World!\n"
        status = "200 OK"
    else:
        body = b"Not Found\n"
        status = "404 Not Found"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = RequestLogger(hello)
