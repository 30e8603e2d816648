#!/usr/bin/env python3
"""Hostile FastCGI multiplexing against one postern worker: the worker's RSS before,
during and after.

N connections each begin 64 requests (FCGI_KEEP_CONN, 1 MiB of STDIN announced), then
write their STDIN records interleaved (64 KiB each) until postern stops reading them (a
send blocks for --send-timeout) or all is sent. The app is protocol-tests/apps/testapp.py; PATH
chooses how fast the requests leave: /unread-body answers at once without reading its
body, /sleep (QUERY s=SECONDS) holds a thread, so the others wait in the queue with
their STDIN. Prints VmRSS/VmHWM (MiB) of the worker (a single process: postern
without --workers is the worker).

    python3 benches/fastcgi_flood.py --postern-bin target/release/postern --conns 10 \\
        --path /sleep --query s=5
"""
import argparse
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = 65528
IDS = 64
RECORDS = 16


def rec(kind, rid, content):
    pad = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), pad, 0) + content + b"\0" * pad


def pairs(items):
    out = b""
    for k, v in items:
        k, v = k.encode(), v.encode()
        for n in (len(k), len(v)):
            out += bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
        out += k + v
    return out


def rss(pid):
    d = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    return int(d["VmRSS"].split()[0]) >> 10, int(d["VmHWM"].split()[0]) >> 10


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern-bin", default=str(ROOT / "target/release/postern"))
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--path", default="/unread-body")
    ap.add_argument("--query", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--send-timeout", type=float, default=2.0,
                    help="a connection whose send blocks this long counts as no longer read")
    ap.add_argument("args", nargs="*", help="more postern options (after --)")
    a = ap.parse_args()
    port = 20000 + os.getpid() % 20000
    p = subprocess.Popen(
        [a.postern_bin, str(ROOT / "protocol-tests/apps/testapp.py"), "--fastcgi", f"127.0.0.1:{port}",
         "--threads", str(a.threads), "--access-log", "off", *a.args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss(p.pid)
        keep, sent = [], []
        lock = threading.Lock()

        def one():
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(a.send_timeout)
            head = b""
            for i in range(1, IDS + 1):
                head += rec(1, i, struct.pack(">HB5x", 1, 1))
                head += rec(4, i, pairs([
                    ("REQUEST_METHOD", "POST"), ("SCRIPT_NAME", a.path), ("REQUEST_URI", a.path),
                    ("QUERY_STRING", a.query), ("CONTENT_LENGTH", str(RECORDS * RECORD)),
                    ("SERVER_PROTOCOL", "HTTP/1.1"), ("SERVER_NAME", "x"), ("SERVER_PORT", "80")]))
                head += rec(4, i, b"")
            n = 0
            try:
                s.sendall(head)
                payload = b"x" * RECORD
                for _ in range(RECORDS):
                    for i in range(1, IDS + 1):
                        r = rec(5, i, payload)
                        s.sendall(r)
                        n += len(r)
            except OSError:
                pass
            with lock:
                keep.append(s)
                sent.append(n)

        ts = [threading.Thread(target=one) for _ in range(a.conns)]
        for t in ts:
            t.start()
        peak = 0
        while any(t.is_alive() for t in ts):
            peak = max(peak, rss(p.pid)[0])
            time.sleep(0.05)
        during = rss(p.pid)
        for s in keep:
            s.close()
        time.sleep(1)
        after = rss(p.pid)
        print(f"{a.conns} connections x {IDS} requests x {RECORDS * RECORD >> 10} KiB STDIN, path {a.path}"
              f"{'?' + a.query if a.query else ''}: {sum(sent) >> 20} MiB of STDIN written")
        print(f"worker RSS MiB: before {before[0]}; during peak {max(peak, during[0])} (VmHWM {during[1]}); "
              f"after {after[0]}")
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
