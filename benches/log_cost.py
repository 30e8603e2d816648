#!/usr/bin/env python3
"""What logging costs per request: user-space instructions (callgrind) of one postern
process (`--workers 1 --threads 1`, no master) serving N uwsgi requests straight to its
socket, with the access log and the `info` request span on and off.

Not a test: run it by hand (Python 3 stdlib, valgrind).

    cargo build --release && python3 benches/log_cost.py [--requests 500] [--bin PATH]

Four runs of the same app (benches/apps/hello.py) and requests (what nginx's uwsgi_params
send for `GET /`):
  info         the default: the request span is recorded, one access line per request
  info, no access log     --access-log off
  warn         --log-level warn: no span, the access line still written (--log-level never
               hides it)
  warn, no access log     --log-level warn --access-log off: neither

After W warm-up requests the counters are zeroed (callgrind_control -z), N requests are
served one at a time on a new connection each, the counters dumped (-d):
instructions/request = the dump's total / N, over every thread of the process (the access
log's writer thread included). Logs go to a file in the run's scratch directory.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "benches" / "apps" / "hello.py"

VARIANTS = [
    ("info (default)", []),
    ("info, --access-log off", ["--access-log", "off"]),
    ("--log-level warn", ["--log-level", "warn"]),
    ("--log-level warn --access-log off", ["--log-level", "warn", "--access-log", "off"]),
]

VARS = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""), ("REQUEST_URI", "/"), ("PATH_INFO", "/"),
    ("DOCUMENT_ROOT", "/etc/nginx/html"), ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "http"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "51234"),
    ("SERVER_PORT", "8080"), ("SERVER_NAME", ""), ("HTTP_HOST", "127.0.0.1"),
]


def uwsgi_packet() -> bytes:
    body = b""
    for k, v in VARS:
        k, v = k.encode(), v.encode()
        body += len(k).to_bytes(2, "little") + k + len(v).to_bytes(2, "little") + v
    return bytes([0]) + len(body).to_bytes(2, "little") + bytes([0]) + body


def request(sock: Path, packet: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(60)
        c.connect(str(sock))
        c.sendall(packet)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
    if not got.startswith(b"HTTP/1.1 200"):
        sys.exit(f"log_cost: unexpected answer {got[:100]!r}")


def control(flag: str, pid: int) -> None:
    r = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        sys.exit(f"log_cost: callgrind_control {flag}: {r.stdout}{r.stderr}")


def measure(binary: str, extra: list[str], n: int, warm: int) -> float:
    run = Path(tempfile.mkdtemp(prefix="postern-logcost-"))
    sock = run / "app.sock"
    log = open(run / "postern.log", "wb")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={run}/cg.%p", binary,
           "--uwsgi", f"unix:{sock}", "--workers", "1", "--threads", "1", *extra,
           f"{APP}:application"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONHASHSEED"] = "0"
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=run,
                         env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"log_cost: postern did not start:\n{(run / 'postern.log').read_text()}")
            time.sleep(0.1)
        # The socket's file is there once bound; it accepts once postern listens.
        while True:
            with socket.socket(socket.AF_UNIX) as c:
                if c.connect_ex(str(sock)) == 0:
                    break
            if p.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"log_cost: postern did not listen:\n{(run / 'postern.log').read_text()}")
            time.sleep(0.1)
        packet = uwsgi_packet()
        for _ in range(warm):
            request(sock, packet)
        time.sleep(0.5)  # the writer thread drains the warm-up lines before counting
        control("-z", p.pid)
        for _ in range(n):
            request(sock, packet)
        time.sleep(0.5)  # ... and writes the counted ones
        control("-d", p.pid)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    total = 0
    dumps = [f for f in run.iterdir() if f.name.startswith("cg.") and re.search(r"\.\d+$", f.name)]
    for f in dumps:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                total = max(total, int(line.split()[1]))
    if not total:
        sys.exit(f"log_cost: no counted dump in {run}")
    lines = (run / "postern.log").read_text(errors="replace").count("postern::access")
    print(f"  ({run}: {lines} access lines in the log)", file=sys.stderr)
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "postern"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    a = ap.parse_args()
    rows = []
    for name, extra in VARIANTS:
        ir = measure(a.bin, extra, a.requests, a.warmup)
        rows.append((name, ir))
        print(f"{name:40} {ir:10,.0f} instructions/request", flush=True)
    floor = rows[-1][1]
    print("\nagainst --log-level warn --access-log off:")
    for name, ir in rows:
        print(f"  {name:40} {ir - floor:+9,.0f}")


if __name__ == "__main__":
    main()
