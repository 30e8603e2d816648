#!/usr/bin/env python3
"""Resident memory per worker: postern vs uWSGI, idle and after N requests.

Starts each server on its own Unix socket with the same worker/thread settings and the
same app, measures the RSS of every worker process (the master excluded) once all
workers are up (idle), sends N requests straight over the uwsgi protocol (no front
server: this measures the workers, not nginx), then measures again. A script, not a
timed test.

    python3 benches/rss.py                          # 2 workers x 1 thread, 10k requests
    python3 benches/rss.py --threads 4 --requests 20000 --format markdown

Needs the uWSGI venv made by benches/uwsgi_vs_postern.py (target/bench-venv) or
`--uwsgi PATH`.
"""
import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def packet(path):
    vars_ = [(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", path), (b"QUERY_STRING", b""),
             (b"SERVER_NAME", b"bench"), (b"SERVER_PORT", b"80"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in vars_)
    return bytes([0]) + struct.pack("<H", len(block)) + bytes([0]) + block


def request(sock_path, pkt):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(pkt)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out.startswith(b"HTTP/1.1 200")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def rss_mib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(name, cmd, sock_path, workers, n, conc):
    log = open(os.path.join(os.path.dirname(sock_path), name + ".log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            ws = children(proc.pid)
            if len(ws) >= workers and os.path.exists(sock_path):
                try:
                    if request(sock_path, packet(b"/")):
                        break
                except OSError:
                    pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name} did not start; see {log.name}")
            time.sleep(0.2)
        time.sleep(1.0)
        ws = children(proc.pid)
        idle = [rss_mib(p) for p in ws]
        done = [0]
        lock = threading.Lock()

        def client(k):
            pkt = packet(b"/")
            for _ in range(k):
                if request(sock_path, pkt):
                    with lock:
                        done[0] += 1

        ts = [threading.Thread(target=client, args=(n // conc,)) for _ in range(conc)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        after = [rss_mib(p) for p in children(proc.pid)]
        return idle, after, done[0]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--app", default=os.path.join(ROOT, "examples/hello.py"))
    ap.add_argument("--postern-bin", default=os.path.join(ROOT, "target/release/postern"))
    ap.add_argument("--uwsgi", default=os.path.join(ROOT, "target/bench-venv/bin/uwsgi"))
    ap.add_argument("--format", choices=["text", "markdown"], default="text")
    a = ap.parse_args()
    if not os.path.exists(a.postern_bin):
        subprocess.check_call(["cargo", "build", "--release"], cwd=ROOT)
    if not os.path.exists(a.uwsgi):
        raise SystemExit("no uWSGI: run benches/uwsgi_vs_postern.py once (it makes target/bench-venv)")
    tmp = tempfile.mkdtemp(prefix="postern-rss-")
    try:
        ps = os.path.join(tmp, "p.sock")
        us = os.path.join(tmp, "u.sock")
        rows = []
        for name, cmd, sock in [
            ("postern", [a.postern_bin, a.app, "--uwsgi", "unix:" + ps, "--workers", str(a.workers),
                         "--threads", str(a.threads), "--log-level", "warn", "--access-log", "off"], ps),
            ("uWSGI", [a.uwsgi, "--master", "--socket", us, "--wsgi-file", a.app, "--processes", str(a.workers),
                       "--threads", str(a.threads), "--disable-logging", "--die-on-term"], us),
        ]:
            idle, after, done = measure(name, cmd, sock, a.workers, a.requests, a.concurrency)
            rows.append((name, idle, after, done))
        cmdline = "python3 benches/rss.py " + " ".join(sys.argv[1:])
        if a.format == "markdown":
            print(f"| server ({a.workers} workers x {a.threads} threads) | RSS per worker idle (MiB) | after {a.requests} requests (MiB) |")
            print("|---|---:|---:|")
            for name, idle, after, done in rows:
                print(f"| {name} | {sum(idle)/len(idle):.1f} | {sum(after)/len(after):.1f} |")
            print(f"\n`{cmdline}`")
        else:
            for name, idle, after, done in rows:
                print(f"{name:8} workers={len(idle)} idle MiB={[round(x, 1) for x in idle]} "
                      f"after {done} requests MiB={[round(x, 1) for x in after]}")
            print("command:", cmdline)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
