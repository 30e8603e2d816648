#!/usr/bin/env python3
"""Memory of a whole server, master included: postern vs uWSGI, as PSS.

PSS (proportional set size, /proc/PID/smaps_rollup) splits each shared page between
the processes that map it, so the sum over the master and its workers is what the
server really costs: pages the workers share with the master (copy-on-write after the
fork, the libraries) count once. Starts each server on its own Unix socket with the
same app and worker settings, waits until every worker answers, measures (idle), sends
N requests straight over the uwsgi protocol (no front server) and keeps the largest
sum measured meanwhile (under load).

    python3 benches/pss.py                       # 2 workers x 1 thread, 20,000 requests
    python3 benches/pss.py --detail              # also: where the PSS is, per mapping, and
                                                 # each process's own (private dirty) memory
    python3 benches/pss.py --postern-args=--preload

Needs uWSGI in target/bench-venv (`python3 -m venv target/bench-venv &&
target/bench-venv/bin/pip install uwsgi`) or `--uwsgi PATH`. A script, not a test.
"""
import argparse
import collections
import os
import shlex
import shutil
import signal
import statistics
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


def request(sock_path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(packet(b"/"))
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out.startswith(b"HTTP/1.1 200")


def tree(root):
    """`root` and all its descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    parent[int(d)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def pss_kib(pid, field="Pss:"):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def code_kib(pid):
    """Rss of the server binary's executable mapping (its code) in `pid`, in KiB."""
    total, code = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) > 5 else ""
                code = "x" in parts[1] and classify(path) == "server binary"
            elif code and first == "Rss:":
                total += int(line.split()[1])
    return total


# A worker maps about 1.4 MiB of postern's code when src/hot-text.ld is fresh (hello over
# uwsgi), 2.9 MiB when it was 300 commits stale (2026-12-06; 2 MiB more PSS for master +
# 2 workers): above this, the script is out of date.
STALE_CODE_KIB = 2048


def classify(name):
    if not name:
        return "anonymous"
    base = os.path.basename(name)
    if name.startswith("["):
        return name
    if base.startswith("libpython"):
        return "libpython"
    if base in ("postern", "uwsgi"):
        return "server binary"
    if name.endswith(".so") or ".so." in base:
        return "python extension" if "lib-dynload" in name or "site-packages" in name else "other library"
    return "other file"


def detail(pids, field="Pss:"):
    """`field` (PSS by default) per kind of mapping (KiB), summed over `pids`."""
    kinds = collections.Counter()
    for pid in pids:
        kind = None
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split(None, 5)
                    kind = classify(parts[5].strip() if len(parts) > 5 else "")
                elif first == field:
                    kinds[kind] += int(line.split()[1])
    return kinds


def private_detail(root, pids):
    """Each process's own memory: Private_Dirty (pages it wrote after the fork, or new
    ones; a page the master wrote after the fork also counts in the workers that still
    have the old one) per kind of mapping, for the master and for each worker, in KiB."""
    return [("master" if pid == root else "worker", detail([pid], "Private_Dirty:")) for pid in pids]


def measure(name, cmd, sock_path, processes, n, conc, want_detail):
    log = open(os.path.join(os.path.dirname(sock_path), name + ".log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 60
        # Every worker answers: more requests than workers, each on a fresh connection.
        while True:
            if len(tree(proc.pid)) >= processes and os.path.exists(sock_path):
                try:
                    if all(request(sock_path) for _ in range(processes * 2)):
                        break
                except OSError:
                    pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name} did not start; see {log.name}")
            time.sleep(0.2)
        time.sleep(1.0)
        pids = tree(proc.pid)
        idle = sum(pss_kib(p) for p in pids)
        idle_anon = sum(pss_kib(p, "Pss_Anon:") for p in pids)
        idle_detail = (detail(pids), private_detail(proc.pid, pids)) if want_detail else None

        def client(k):
            for _ in range(k):
                request(sock_path)

        ts = [threading.Thread(target=client, args=(n // conc,)) for _ in range(conc)]
        for t in ts:
            t.start()
        # Under load: the largest PSS sampled while the clients run.
        loaded = 0
        while any(t.is_alive() for t in ts):
            try:
                loaded = max(loaded, sum(pss_kib(p) for p in tree(proc.pid)))
            except OSError:
                pass
            time.sleep(0.1)
        for t in ts:
            t.join()
        if name == "postern":
            code = max(code_kib(p) for p in tree(proc.pid) if p != proc.pid)
            print(f"    postern: a worker maps {code / 1024:.2f} MiB of postern's code after serving")
            if code > STALE_CODE_KIB:
                print(f"!!! more than {STALE_CODE_KIB // 1024} MiB: src/hot-text.ld is out of date "
                      "(or this binary was not linked with it): run python3 benches/hot_text.py, "
                      "rebuild, measure again")
        return len(pids), idle, idle_anon, loaded, idle_detail
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
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--app", default=os.path.join(ROOT, "examples/hello.py"))
    ap.add_argument("--postern-bin", default=os.path.join(ROOT, "target/release/postern"))
    ap.add_argument("--postern-args", default="")
    ap.add_argument("--uwsgi", default=os.path.join(ROOT, "target/bench-venv/bin/uwsgi"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--detail", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(a.postern_bin):
        subprocess.check_call(["cargo", "build", "--release"], cwd=ROOT)
    tmp = tempfile.mkdtemp(prefix="postern-pss-")
    try:
        # A private copy of the binary: its pages must not be shared with other postern
        # processes on the machine (tests), which would lower its PSS.
        binary = os.path.join(tmp, "postern")
        shutil.copy(a.postern_bin, binary)
        ps = os.path.join(tmp, "p.sock")
        us = os.path.join(tmp, "u.sock")
        servers = [("postern", [binary, a.app, "--uwsgi", "unix:" + ps, "--workers", str(a.workers),
                                "--threads", str(a.threads), "--log-level", "warn", "--access-log", "off",
                                # uWSGI's venv: the same site-packages (and .pth files) for both.
                                "--venv", os.path.dirname(os.path.dirname(a.uwsgi))]
                    + shlex.split(a.postern_args), ps)]
        if os.path.exists(a.uwsgi):
            servers.append(("uWSGI", [a.uwsgi, "--master", "--socket", us, "--wsgi-file", a.app,
                                      "--processes", str(a.workers), "--threads", str(a.threads),
                                      "--disable-logging", "--die-on-term"], us))
        else:
            print(f"(no uWSGI at {a.uwsgi}: postern only)")
        results = collections.defaultdict(list)
        # Interleaved rounds, medians: file pages (libpython, libc) count less while
        # other processes on the machine map them too, and that changes over time.
        for _ in range(a.rounds):
            for name, cmd, sock in servers:
                n, idle, anon, after, kinds = measure(name, cmd, sock, a.workers + 1, a.requests,
                                                      a.concurrency, a.detail)
                results[name].append((idle, anon, after))
                if kinds:
                    for kind, kib in sorted(kinds[0].items(), key=lambda kv: -kv[1])[:8]:
                        print(f"    {name} {kind:20} {kib / 1024:6.2f} MiB")
                    for role, own in kinds[1]:
                        top = sorted(own.items(), key=lambda kv: -kv[1])[:5]
                        print(f"    {name} {role} private dirty {sum(own.values()) / 1024:.2f} MiB: "
                              + ", ".join(f"{kind} {kib / 1024:.2f}" for kind, kib in top))
        for name, rows in results.items():
            med = [statistics.median(col) / 1024 for col in zip(*rows)]
            print(f"{name:8} {a.workers + 1} processes, median of {a.rounds}: PSS idle {med[0]:.1f} MiB "
                  f"(anonymous {med[1]:.1f}), under load (largest during {a.requests} requests, "
                  f"{a.concurrency} clients) {med[2]:.1f} MiB")
        print("command: python3 benches/pss.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
