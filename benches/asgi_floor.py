#!/usr/bin/env python3
"""The floor of an ASGI request on this CPython: what any ASGI server must make CPython do
per request, measured alone in user-space instructions (callgrind), beside the same
minimum for a WSGI request. Not a test: a script you run by hand (needs valgrind; uvloop
for --loop uvloop).

    python3 benches/asgi_floor.py                       # asyncio and uvloop, ~1 min
    python3 benches/asgi_floor.py --python target/bench-venv/bin/python --loop uvloop
    python3 benches/asgi_floor.py --cpu      # also native CPU time per request (noisy)

Each "request" is the least a server can do, written in Python only where a server written
in C or Rust would call the same C function (dict copy, Task(), a ready awaitable):

- wsgi:  environ = a copy of a 24-key template dict; `app(environ, start_response)`
         (benches/apps/hello.py's body: a status, two headers, one body chunk); the
         returned list read. No event loop, no coroutine.
- scope: the ASGI scope alone: a copy of a 14-key template dict, a new `asgi` dict (a copy),
         a new headers list, a new `extensions` dict (postern makes these four new per
         request: an app may change what it is given).
- coro:  scope + the app's coroutine (benches/apps/hello_asgi.py's body: two
         `await send({...})` of message dicts), run to its end by iterating it, with no
         loop and no Task: `send` reads the message (type, status/headers or body) and returns
         an already-done asyncio future (awaiting it yields nothing: the cheapest ready
         awaitable CPython has).
- task:  coro + what 3.11 requires of a real ASGI server: the coroutine runs in an
         `asyncio.Task` (anyio, under Starlette and FastAPI, needs `current_task()`;
         created directly, named, so no name is formatted) on the event loop, started by
         a loop callback (the readiness callback of the listening socket) in one loop
         iteration: the Task's first step is a `call_soon` (3.11 has no eager tasks), the
         task is registered in asyncio's WeakSet of tasks and unregistered by a weakref
         callback when it is freed.

instructions/request = (Ir of a run with N + M requests - Ir of a run with M) / N, the
whole process, so start-up and teardown cancel out.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HARNESS = r'''
import asyncio, sys
part, n, loop_kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if loop_kind == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)

BODY = b"Hello, World!\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

DONE = loop.create_future()
DONE.set_result(None)

def send(message):
    if message["type"] == "http.response.body":
        message.get("body"), message.get("more_body", False)
    else:
        message["status"], message.get("headers")
    return DONE

def receive():
    return DONE

TEMPLATE = {k: None for k in ("type", "asgi", "http_version", "method", "scheme", "path",
            "raw_path", "query_string", "root_path", "headers", "client", "server", "state",
            "extensions")}
TEMPLATE.update(type="http", http_version="1.1", method="GET", scheme="http", path="/",
                raw_path=b"/", query_string=b"", root_path="", client=("127.0.0.1", 51234),
                server=("127.0.0.1", 8080), state={})
ASGI = {"version": "3.0", "spec_version": "2.4"}
HOST = (b"host", b"127.0.0.1")

def scope():
    s = TEMPLATE.copy()
    s["asgi"] = ASGI.copy()
    s["headers"] = [HOST]
    s["extensions"] = {"http.response.pathsend": {}}
    return s

ENVIRON = {("K%02d" % i): "v" for i in range(24)}

def start_response(status, headers, exc_info=None):
    return None

def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [BODY]

Task, NAME = asyncio.Task, "request"

if part == "wsgi":
    for _ in range(n):
        environ = ENVIRON.copy()
        for chunk in wsgi_app(environ, start_response):
            pass
elif part == "scope":
    for _ in range(n):
        scope()
elif part == "coro":
    for _ in range(n):
        # Iterating the coroutine's awaitable ends without raising StopIteration (as
        # the Task's PyIter_Send does); c.send(None) would raise it, which costs more.
        for _ in app(scope(), receive, send).__await__():
            pass
elif part == "task":
    left = [n]
    def start():
        # One request per loop callback, as the listening socket's readiness callback.
        Task(app(scope(), receive, send), loop=loop, name=NAME)
        left[0] -= 1
        if left[0] > 0:
            loop.call_soon(start)
        else:
            loop.call_soon(loop.stop)
    loop.call_soon(start)
    loop.run_forever()
loop.close()
'''


def collected(python: str, part: str, n: int, loop: str) -> int:
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        python, "-c", HARNESS, part, str(n), loop],
                       capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise SystemExit(f"asgi_floor: {part} {loop} failed:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def cpu_seconds(python: str, part: str, n: int, loop: str) -> float:
    """User + system CPU of one native run (no valgrind)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([python, "-c", HARNESS, part, str(n), loop], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "0"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    venv_py = os.path.join(here, "..", "target", "bench-venv", "bin", "python")
    ap.add_argument("--python", default=venv_py if os.path.exists(venv_py) else sys.executable)
    ap.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    ap.add_argument("--requests", type=int, default=20000, help="N counted")
    ap.add_argument("--base", type=int, default=2000, help="M in both runs")
    ap.add_argument("--cpu", action="store_true",
                    help="also CPU µs/request of native runs (median of 5; load-dependent)")
    args = ap.parse_args()
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    print(f"{args.python}: instructions per request (callgrind, ({args.base}+{args.requests}) - {args.base} runs)")
    rows = [("wsgi", "-")] + [(p, lp) for lp in loops for p in ("scope", "coro", "task")]
    for part, lp in rows:
        lo = collected(args.python, part, args.base, lp if lp != "-" else "asyncio")
        hi = collected(args.python, part, args.base + args.requests, lp if lp != "-" else "asyncio")
        line = f"  {part:<6} {lp:<8} {(hi - lo) / args.requests:>9,.0f}"
        if args.cpu:
            n = args.requests * 10
            runs = sorted(cpu_seconds(args.python, part, args.base + n, lp if lp != "-" else "asyncio")
                          - cpu_seconds(args.python, part, args.base, lp if lp != "-" else "asyncio")
                          for _ in range(5))
            line += f"   {runs[2] / n * 1e6:6.2f} µs CPU"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
