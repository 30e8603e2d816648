#!/usr/bin/env python3
"""What the access log costs under load: req/s, server CPU and context switches per
request of postern's workers (hello, 2 workers x 1 thread, `postern bench -c16` straight
to a Unix socket), with the access log on (stderr redirected to a file, or a pipe read
by this script) and off, for one or several postern binaries, in interleaved rounds.

Not a test: run it by hand (Python 3 stdlib).

    cargo build --release
    python3 benches/log_load.py --bins target/release/postern [--rounds 3 --duration 8]
    python3 benches/log_load.py --bins /tmp/before/postern,target/release/postern

Per run: CPU = utime+stime of the worker processes (/proc/PID/stat, every thread) over
the run / requests; switches = voluntary + involuntary context switches of every worker
thread (/proc/PID/task/*/status) / requests. Ratios are to `--access-log off` of the
same binary in the same round (the machine's noise is shared within a round).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "benches" / "apps" / "hello.py"
TICK = os.sysconf("SC_CLK_TCK")

VARIANTS = {
    # name: (postern args, where stderr goes)
    "log to a file": ([], "file"),
    "log to a pipe": ([], "pipe"),
    "access log off": (["--access-log", "off"], "file"),
}


def workers(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def counters(pids: list[int]) -> tuple[int, int]:
    """(CPU ticks, context switches) of every thread of `pids`."""
    ticks = switches = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])
            for task in Path(f"/proc/{pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks, switches


def run(binary: str, variant: str, tmp: Path, duration: int) -> dict:
    args, target = VARIANTS[variant]
    sock = tmp / f"s-{time.monotonic_ns()}.sock"
    cmd = [binary, str(APP), "--uwsgi", f"unix:{sock}", "--workers", "2", "--threads", "1", *args]
    drain = None
    if target == "file":
        err = open(tmp / "stderr.log", "ab")
        proc = subprocess.Popen(cmd, stdout=err, stderr=err, start_new_session=True)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        # A reader that keeps up, as a container's log collector does.
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: proc.stderr.read(65536), b"")],
                                 daemon=True)
        drain.start()
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() or len(workers(proc.pid)) < 2:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"{binary} did not start")
            time.sleep(0.1)
        time.sleep(1)
        pids = workers(proc.pid)
        t0, s0 = counters(pids)
        out = subprocess.run([binary, "bench", f"unix:{sock}", "-c16", f"-d{duration}",
                              "--format", "json"], capture_output=True, text=True, check=True).stdout
        t1, s1 = counters(pids)
        r = json.loads(out)
        n = r["responses"]
        return {"rps": r["requests_per_s"], "cpu": (t1 - t0) / TICK * 1e6 / n,
                "switches": (s1 - s0) / n, "errors": r["errors_total"] + r["non_2xx"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bins", default=str(REPO / "target/release/postern"),
                    help="comma-separated postern binaries")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per run")
    a = ap.parse_args()
    bins = a.bins.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="log-load-") as tmp:
        for rnd in range(a.rounds):
            order = [(b, v) for b in bins for v in VARIANTS]
            if rnd % 2:
                order.reverse()
            for b, v in order:
                r = run(b, v, Path(tmp), a.duration)
                results.setdefault((b, v), []).append(r)
                print(f"round {rnd + 1}  {b}  {v:15}  {r['rps']:9,.0f} req/s  "
                      f"{r['cpu']:6.1f} us/req  {r['switches']:5.2f} switches/req  errors {r['errors']}",
                      flush=True)
    print("\nmedians over rounds; x off: the per-round ratio to `access log off` of that binary, median")
    for b in bins:
        for v in VARIANTS:
            rs = results[(b, v)]
            offs = results[(b, "access log off")]
            ratio = statistics.median(r["rps"] / o["rps"] for r, o in zip(rs, offs))
            cpu_ratio = statistics.median(r["cpu"] / o["cpu"] for r, o in zip(rs, offs))
            print(f"{b}  {v:15}  {statistics.median(r['rps'] for r in rs):9,.0f} req/s "
                  f"(x off {ratio:.2f})  {statistics.median(r['cpu'] for r in rs):6.1f} us/req "
                  f"(x off {cpu_ratio:.2f})  {statistics.median(r['switches'] for r in rs):5.2f} switches/req")


if __name__ == "__main__":
    main()
