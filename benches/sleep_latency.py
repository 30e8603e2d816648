#!/usr/bin/env python3
"""What a scheduling policy costs an app's own I/O waits: `--sched-batch` modes side by
side, with every CPU busy.

Not a test: a script you run by hand (Python 3 stdlib).

    python3 benches/sleep_latency.py --postern-bin target/release/postern
    python3 benches/sleep_latency.py --postern-bin BIN --modes off,waits,always --rounds 5

For each mode, postern serves benches/apps/sleep.py at 1 worker x 4 threads on a unix
socket (no nginx: the waits are the app's, not the front server's) while N CPU-bound
processes (--hogs, default one per CPU) keep every CPU busy. Each request to `/sleeps`
makes 300 `time.sleep(0.001)` in the app and answers how much longer than 1 ms each took
(median, mean). The modes run in interleaved rounds (the order reverses every round);
printed: per mode, the median over rounds of the per-request medians and means, in ms.
A thread that runs the app under SCHED_BATCH waits, when every CPU is busy, for the
running task's slice (up to a tick, 4 ms at HZ=250) each time a wait ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "apps" / "sleep.py"


def uwsgi_get(path: str, sock: str) -> bytes:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REQUEST_URI": path, "QUERY_STRING": "",
           "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "bench", "SERVER_PORT": "80",
           "HTTP_HOST": "bench"}
    pairs = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
                     for k, v in env.items())
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(struct.pack("<BHB", 0, len(pairs), 0) + pairs)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"unexpected answer: {data[:200]!r}")
    return body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postern-bin", required=True)
    ap.add_argument("--modes", default="off,waits,always", help="--sched-batch values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3, help="requests to /sleeps per mode and round")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="sleep-latency-"))
    procs: list[subprocess.Popen] = []
    socks = {}
    try:
        for m in modes:
            sock = tmp / f"{m}.sock"
            socks[m] = str(sock)
            log = open(tmp / f"{m}.log", "ab")
            procs.append(subprocess.Popen(
                [args.postern_bin, "--uwsgi", f"unix:{sock}", "--workers", "1", "--threads", "4",
                 "--log-level", "warn", "--access-log", "off", f"--sched-batch={m}",
                 f"{APP}:application"], stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + 30
        for m in modes:
            while True:
                try:
                    uwsgi_get("/", socks[m])
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{m}: postern did not answer; {tmp / (m + '.log')}")
                    time.sleep(0.1)
        for _ in range(args.hogs):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          start_new_session=True))
        time.sleep(0.5)
        medians: dict[str, list[float]] = {m: [] for m in modes}
        means: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                for _ in range(args.requests):
                    med, mean = (float(x) for x in uwsgi_get("/sleeps", socks[m]).split())
                    medians[m].append(med)
                    means[m].append(mean)
        print(f"{args.hogs} CPU-bound process(es) on {os.cpu_count()} CPUs; 1 worker x 4 threads; "
              f"{args.rounds} round(s) x {args.requests} request(s) of 300 x time.sleep(0.001)")
        print(f"{'--sched-batch':<14} {'over each sleep, ms: median':>28} {'mean':>8}")
        for m in modes:
            print(f"{m:<14} {statistics.median(medians[m]):>28.3f} {statistics.median(means[m]):>8.3f}")
        return 0
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL if p.args[0] == sys.executable else signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
