#!/usr/bin/env python3
"""What --stats costs on the request path: CPU per request, metrics off vs on.

Not a test: a script you run by hand (Python 3 stdlib, valgrind).

    python3 benches/metrics_cost.py                      # single process, 2000 requests
    python3 benches/metrics_cost.py --mode workers       # master + 1 worker
    python3 benches/metrics_cost.py --format markdown

Measurements, each for `off` (no --stats) and `on` (--stats unix:...), with postern
serving examples/hello.py under `valgrind --tool=callgrind` (every thread, and with
--mode workers every process):

1. Instructions per request in the monitor (the scoreboard bookkeeping and the metrics
   counters: `WorkerMonitor::begin` and `::end`, collected with --toggle-collect over
   W + N requests): exact and repeatable. In a single process `off` has no monitor at
   all, so `on` is the whole cost of --stats; under a master (--mode workers) the
   monitor always runs (--timeout needs it) and the difference is the counters alone.
1b. Instructions per request of the whole process: a run that serves W warm-up
   requests and one that serves W + N are subtracted, so start-up and shutdown cancel
   out. Only a cross-check: it moves by hundreds of instructions from run to run (work
   that follows the clock, not the requests: the master's 200 ms loop, idle threads).
2. CPU time per request natively (user and system time of postern's processes over
   --native-requests requests, median of --rounds interleaved rounds). Callgrind counts
   user-space instructions only, so user time turns them into nanoseconds:
   ns(metrics) = delta Ir x (user ns per request / Ir per request) of the `off` run.
   The native on/off difference itself is below the clock-tick resolution of
   /proc/PID/stat (and the noise); it is printed, not used.

Requests are plain uwsgi GETs sent one at a time over a Unix socket by this script (no
nginx: it is not in the measured processes). The access log is off (--access-log off)
so that its writer thread's batching does not blur the counts.

1. `cargo build --release` (skip with --postern-bin PATH).
2. Everything runs in a temp dir and is stopped on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import process_tree  # the same /proc walk (this folder is on sys.path)

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "hello.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def die(msg: str) -> None:
    raise SystemExit(f"metrics_cost: {msg}")


def uwsgi_get(path: str) -> bytes:
    """One uwsgi packet: GET `path` (modifier1 0, vars little-endian)."""
    block = b""
    for k, v in [
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("REQUEST_URI", path),
        ("QUERY_STRING", ""),
        ("SERVER_NAME", "bench"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
    ]:
        for s in (k.encode(), v.encode()):
            block += len(s).to_bytes(2, "little") + s
    return b"\x00" + len(block).to_bytes(2, "little") + b"\x00" + block


REQUEST = uwsgi_get("/")


def send(sock_path: Path, n: int) -> None:
    """n requests, one after the other; each must answer 200."""
    for _ in range(n):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(sock_path))
            s.sendall(REQUEST)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        if not out.startswith(b"HTTP/1.1 200"):
            die(f"unexpected answer: {out[:200]!r}")


def postern_cmd(bin_: Path, sock: Path, stats: Path | None, mode: str) -> list[str]:
    cmd = [str(bin_), str(APP), "--uwsgi", f"unix:{sock}", "--threads", "1",
           "--access-log", "off"]
    if mode == "workers":
        cmd += ["--master", "--workers", "1"]
    if stats is not None:
        cmd += ["--stats", f"unix:{stats}"]
    return cmd


def wait_ready(proc: subprocess.Popen, log_path: Path, mode: str, secs: float) -> None:
    needle = "ready" if mode == "single" else "workers ready"
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"postern exited early:\n{log_path.read_text(errors='replace')}")
        if needle in log_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    die(f"postern did not get ready in {secs:.0f}s:\n{log_path.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


MONITOR = [
    "--toggle-collect=*WorkerMonitor as postern::wsgi::Monitor>::begin",
    "--toggle-collect=*WorkerMonitor as postern::wsgi::Monitor>::end",
]


def callgrind_run(bin_: Path, work: Path, metrics: bool, mode: str, n: int,
                  monitor_only: bool = False) -> int:
    """Total instructions (Ir) of postern's processes for a run that serves n requests
    (with `monitor_only`, only those inside the monitor)."""
    run = Path(tempfile.mkdtemp(dir=work))
    sock, stats = run / "app.sock", (run / "stats.sock") if metrics else None
    log_path = run / "postern.log"
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes",
           f"--callgrind-out-file={run}/callgrind.out.%p"]
    if monitor_only:
        cmd += MONITOR
    cmd += postern_cmd(bin_, sock, stats, mode)
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("VIRTUAL_ENV", None)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=run, env=env, start_new_session=True)
    try:
        wait_ready(proc, log_path, mode, 300)
        send(sock, n)
    finally:
        stop(proc)
    total = 0
    for f in run.glob("callgrind.out.*"):
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"^(?:summary|totals):\s+(\d+)", line)
            if m:
                total += int(m.group(1))
                break
    if total == 0 and not monitor_only:
        die(f"no callgrind totals in {run}")
    shutil.rmtree(run, ignore_errors=True)
    return total


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the given processes (all their threads)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def native_run(bin_: Path, work: Path, metrics: bool, mode: str, warmup: int,
               n: int) -> tuple[float, float]:
    """(user, system) CPU seconds per request of postern's processes, natively."""
    run = Path(tempfile.mkdtemp(dir=work))
    sock, stats = run / "app.sock", (run / "stats.sock") if metrics else None
    log_path = run / "postern.log"
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(postern_cmd(bin_, sock, stats, mode), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, cwd=run, env=env,
                                start_new_session=True)
    try:
        wait_ready(proc, log_path, mode, 60)
        send(sock, warmup)
        pids = process_tree(proc.pid)
        before = cpu_seconds(pids)
        send(sock, n)
        after = cpu_seconds(pids)
    finally:
        stop(proc)
    shutil.rmtree(run, ignore_errors=True)
    return (after[0] - before[0]) / n, (after[1] - before[1]) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postern-bin", type=Path, help="skip the release build")
    ap.add_argument("--mode", choices=["single", "workers"], default="single",
                    help="a single process, or a master with one worker")
    ap.add_argument("--warmup", type=int, default=200, help="requests before counting")
    ap.add_argument("--requests", type=int, default=2000,
                    help="requests counted under callgrind")
    ap.add_argument("--native-requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3, help="native rounds (median)")
    ap.add_argument("--format", choices=["text", "markdown"], default="text")
    args = ap.parse_args()

    if shutil.which("valgrind") is None:
        die("valgrind is not installed (apt-get install valgrind)")
    bin_ = args.postern_bin.resolve() if args.postern_bin else None
    if bin_ is None:
        log("== cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "postern"],
                       cwd=REPO, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        bin_ = target / "release" / "postern"

    work = Path(tempfile.mkdtemp(prefix="postern-metrics-cost-"))
    try:
        ir: dict[bool, float] = {}
        mon: dict[bool, float] = {}
        total = args.warmup + args.requests
        for metrics in (False, True):
            name = "on" if metrics else "off"
            log(f"== callgrind, metrics {name}: {args.warmup} and {total} requests ({args.mode})")
            mon[metrics] = callgrind_run(bin_, work, metrics, args.mode, total, True) / total
            log(f"   monitor: {mon[metrics]:,.1f} instructions per request")
            small = callgrind_run(bin_, work, metrics, args.mode, args.warmup)
            big = callgrind_run(bin_, work, metrics, args.mode, total)
            ir[metrics] = (big - small) / args.requests
            log(f"   whole process: {ir[metrics]:,.0f} instructions per request")
        cpu: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for metrics in order:
                cpu[metrics].append(native_run(bin_, work, metrics, args.mode, args.warmup,
                                               args.native_requests))
            (ou, os_), (nu, ns_) = cpu[False][-1], cpu[True][-1]
            log(f"== native round {r + 1}: off {ou * 1e6:.2f} user + {os_ * 1e6:.2f} system us, "
                f"on {nu * 1e6:.2f} user + {ns_ * 1e6:.2f} system us per request")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(metrics: bool, i: int) -> float:
        return statistics.median(c[i] for c in cpu[metrics]) * 1e6
    off_user, on_user = med(False, 0), med(True, 0)
    off_all, on_all = off_user + med(False, 1), on_user + med(True, 1)
    delta_ir = ir[True] - ir[False]
    delta_mon = mon[True] - mon[False]
    ns_per_ir = off_user * 1000 / ir[False]
    delta_ns = delta_mon * ns_per_ir
    rows = [
        ("monitor instructions per request (exact)", f"{mon[False]:,.0f}", f"{mon[True]:,.0f}",
         f"{delta_mon:+,.0f}"),
        ("whole-process instructions per request", f"{ir[False]:,.0f}", f"{ir[True]:,.0f}",
         f"{delta_ir:+,.0f} (+/- a few 100)"),
        ("user CPU per request, native", f"{off_user:.2f} us", f"{on_user:.2f} us",
         f"{on_user - off_user:+.2f} us (noise)"),
        ("user + system CPU per request, native", f"{off_all:.2f} us", f"{on_all:.2f} us",
         f"{on_all - off_all:+.2f} us (noise)"),
        (f"metrics cost: monitor delta x {ns_per_ir:.2f} ns/Ir", "", "", f"{delta_ns:.0f} ns"),
    ]
    log()
    if args.format == "markdown":
        what = "single process" if args.mode == "single" else "master + 1 worker"
        log(f"| {what}, {args.requests} requests | metrics off | metrics on | difference |")
        log("|---|---:|---:|---:|")
        for r in rows:
            log("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            log(f"{r[0]:<44} {r[1]:>10} {r[2]:>10} {r[3]:>22}")
    log(f"\nbudget: 500 ns per request; measured {delta_ns:.0f} ns "
        f"({'within' if delta_ns <= 500 else 'OVER'} budget)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
