#!/usr/bin/env python3
"""A soak under faults: postern behind a real nginx for --duration while the script
breaks things, then a verdict. Not a test: a script (Python 3 stdlib only; needs nginx).

    python3 benches/soak.py                                   # 30 minutes, release build
    python3 benches/soak.py --duration 180 --postern-bin target/debug/postern   # .ci/run
    python3 benches/soak.py --seed 1234 --json soak.json      # replay a schedule, keep figures
    python3 benches/soak.py --duration 70 --faults reload --kinds flask-upload,flask-index  # narrow it down

What runs (all in a temp dir, on unix sockets and free loopback ports):
- two postern instances, each a master with --workers 2 listening for uwsgi, FastCGI and
  SCGI: "hello" serves benches/soak_app.py (hello, an echo of the body's size and sha256,
  streams of N deterministic chunks) with --threads 2, "flask" serves
  examples/flask_app.py from the examples' venv;
- one nginx with a server per (instance, protocol): uwsgi_pass, fastcgi_pass to an
  upstream with keepalive + fastcgi_keep_conn on, scgi_pass;
- a client load (--concurrency threads, keep-alive connections to nginx) of GETs, POSTs,
  uploads up to 1 MiB (raw body and multipart) and streamed responses; every response is
  verified (status, body or its length and sha256, the stream's chunks).

Phases: a warm-up of the load alone, then the faults, then (faults stopped) one reload
and the same warm-up again, so the workers measured at the end are as old, and have
served the same load, as those measured at the start. During the fault phase, at random
intervals drawn from --seed (printed; the schedule is reproducible, the interleaving with
the load is not):
- bad input straight to postern's sockets: truncated, oversized and garbage uwsgi
  packets, FastCGI records with a bad version, lengths or request ids, SCGI netstrings
  that are not, HTTP text on every port, a huge CONTENT_LENGTH then a close;
- idle connections and slow-loris ones (a head or a body trickled byte by byte);
- a reload (SIGHUP to each master) every minute, a SIGKILL to a random worker every two
  minutes (both intervals scaled by --duration / 30 min, at least 6 s and 12 s);
- a streamed response read half-way through nginx, then stalled, then closed.

Verdict (exit 1 on any bug, 0 otherwise):
- failed requests: a failure is expected only when the request was in flight while a
  worker of the instance that served it was SIGKILLed (from KILL_GRACE before the request
  started, for the connection nginx had kept alive to the dead worker, to its end); any
  other failure is a bug;
- nginx's error log (error and worse): each entry is classified; an entry is expected when
  its request is an expected failure, or, without a request, when it was written within a
  second or two of a kill of that upstream's instance; any other entry is a bug;
- postern's log: a worker that died without being killed by the soak (or by its master
  at a reload because it was still importing: it never served), a panic, or a master
  that exited, is a bug;
- idle connections (nothing sent) held past --head-timeout and still open IDLE_LATE
  (1.5 x --head-timeout) later are a bug; closed between, they count as late (a figure:
  a connection left in the listen queue by a busy or booting worker is accepted late,
  and --head-timeout counts from accept); a trickled head still read LORIS_SLACK past
  --head-timeout is a bug;
- memory and descriptors, in the quiet moments after each warm-up: the master's RSS and
  fds, the workers' mean RSS, their fds that are not connections (files, pipes, epoll,
  listeners) and their connections, end against start, within the tolerances below.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
PROTOS = ("uwsgi", "fcgi-keep", "scgi")
# Request kinds of the load and their weights.
KINDS = {"hello": 28, "echo": 16, "stream": 16, "flask-index": 10, "flask-form": 8, "flask-upload": 7,
         "flask-api": 7, "flask-stream": 8}
FAULTS = ("reload", "kill", "bad", "idle", "loris", "stall")
INSTANCES = ("hello", "flask")
WORKERS = 2
THREADS = {"hello": 2, "flask": 1}
BUFFER_SIZE = 32 * 1024     # postern --buffer-size: the "oversized" heads exceed it
HEAD_TIMEOUT = 5            # postern --head-timeout (idle and slow-loris connections)
KEEPALIVE = 8               # nginx upstream keepalive (FastCGI keep-conn)
# A trickled body is given up before --graceful-timeout (20 s), so a worker draining
# after a reload never has to cut it (that exits 1, which the soak counts as a bug).
LORIS_BODY_SECS = 15.0
IDLE_LATE = 1.5 * HEAD_TIMEOUT  # an idle connection still open this long after we held it past --head-timeout: a bug
LORIS_SLACK = 4.0           # seconds past --head-timeout a trickled head may still be read
KILL_GRACE = 1.0            # seconds after a kill in which a request may still meet the dead worker
# Tolerances of the start/end comparison.
MASTER_RSS_MIB = 2.0        # a master's RSS may grow by this much
WORKER_RSS_MIB = 4.0        # the workers' mean RSS: this much, or WORKER_RSS_FRAC of start
WORKER_RSS_FRAC = 0.15
FD_SLACK = 1                # non-connection fds: mean per worker, and the master's
SAMPLE_EVERY = 5.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


def die(msg: str):
    raise SystemExit(f"soak: {msg}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- wire formats


def uwsgi_vars(pairs) -> bytes:
    return b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in pairs)


def uwsgi_packet(pairs, modifier1: int = 0, size: int | None = None) -> bytes:
    body = uwsgi_vars(pairs)
    return struct.pack("<BHB", modifier1, len(body) if size is None else size, 0) + body


def fcgi_record(rtype: int, rid: int, content: bytes = b"", version: int = 1,
                length: int | None = None, padding: int = 0) -> bytes:
    n = len(content) if length is None else length
    return struct.pack(">BBHHBB", version, rtype, rid, n, padding, 0) + content + b"\0" * padding


def fcgi_nv(pairs) -> bytes:
    def ln(n):
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
    return b"".join(ln(len(k)) + ln(len(v)) + k + v for k, v in pairs)


def fcgi_begin(rid: int, role: int = 1, keep: bool = False) -> bytes:
    return fcgi_record(1, rid, struct.pack(">HB5x", role, 1 if keep else 0))


def scgi_head(pairs) -> bytes:
    body = b"".join(k + b"\0" + v + b"\0" for k, v in pairs)
    return str(len(body)).encode() + b":" + body + b","


def cgi_vars(method=b"GET", path=b"/", length: bytes | None = None):
    pairs = [(b"CONTENT_LENGTH", length if length is not None else b"0")] if length is not None else []
    return pairs + [(b"REQUEST_METHOD", method), (b"PATH_INFO", path), (b"REQUEST_URI", path),
                    (b"QUERY_STRING", b""), (b"SERVER_NAME", b"soak"), (b"SERVER_PORT", b"80"),
                    (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"REMOTE_ADDR", b"127.0.0.1")]


def fcgi_request(rid: int, pairs, stdin: bytes = b"", keep: bool = False) -> bytes:
    out = fcgi_begin(rid, keep=keep) + fcgi_record(4, rid, fcgi_nv(pairs)) + fcgi_record(4, rid)
    if stdin:
        out += fcgi_record(5, rid, stdin)
    return out + fcgi_record(5, rid)


def scgi_request(pairs) -> bytes:
    return scgi_head([(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1")] + pairs)


def head_for(proto: str, pairs=None) -> bytes:
    """A valid request head (no body) for one of postern's listener protocols."""
    pairs = cgi_vars() if pairs is None else pairs
    if proto == "uwsgi":
        return uwsgi_packet(pairs)
    if proto == "fastcgi":
        return fcgi_begin(1) + fcgi_record(4, 1, fcgi_nv(pairs)) + fcgi_record(4, 1)
    # SCGI: CONTENT_LENGTH first, once (the request's own, if it has one).
    length = next((v for k, v in pairs if k == b"CONTENT_LENGTH"), b"0")
    rest = [(k, v) for k, v in pairs if k != b"CONTENT_LENGTH"]
    return scgi_head([(b"CONTENT_LENGTH", length), (b"SCGI", b"1")] + rest)


# An outcome that is a bug: counted, and fails the soak.
BUG_MARK = "BUG: "

HTTP_TEXT = b"GET / HTTP/1.1\r\nHost: soak\r\nUser-Agent: curl/8\r\n\r\n"


def bad_inputs(rng: random.Random):
    """Every kind of bad input, by name: (listener protocol, bytes to send, then: "close"
    to shut our side at once, "read" to wait for the server's answer or close)."""
    big = str(10 ** 12).encode()
    junk = lambda lo, hi: rng.randbytes(rng.randint(lo, hi))  # noqa: E731
    v = cgi_vars()
    return {
        # uwsgi
        "uwsgi/truncated-header": ("uwsgi", b"\x00\x10", "close"),
        "uwsgi/truncated-vars": ("uwsgi", uwsgi_packet(v)[:-7], "close"),
        "uwsgi/size-overruns-vars": ("uwsgi", uwsgi_packet(v, size=len(uwsgi_vars(v)) + 500), "close"),
        "uwsgi/key-length-overruns": ("uwsgi", struct.pack("<BHB", 0, 6, 0) + b"\xff\x7fabcd", "read"),
        "uwsgi/value-length-overruns": ("uwsgi", struct.pack("<BHB", 0, 8, 0) + b"\x01\x00a\xff\x7fbcd", "read"),
        "uwsgi/oversized": ("uwsgi", uwsgi_packet([(b"X_PAD", b"p" * (BUFFER_SIZE + 1000))] + v), "read"),
        "uwsgi/max-size-garbage": ("uwsgi", struct.pack("<BHB", 0, 65535, 0) + junk(65535, 65535), "read"),
        "uwsgi/garbage": ("uwsgi", junk(1, 4096), "close"),
        "uwsgi/unknown-modifier1": ("uwsgi", uwsgi_packet(v, modifier1=rng.choice([1, 17, 99, 255])), "read"),
        "uwsgi/no-vars": ("uwsgi", uwsgi_packet([]), "read"),
        "uwsgi/huge-content-length-then-close": (
            "uwsgi", uwsgi_packet(cgi_vars(b"POST", b"/echo", big)) + junk(10, 5000), "close"),
        "uwsgi/bad-content-length": (
            "uwsgi", uwsgi_packet(cgi_vars(b"POST", b"/echo", rng.choice([b"abc", b"-1", b"1e9", b" 5"]))), "read"),
        "uwsgi/http-text": ("uwsgi", HTTP_TEXT, "read"),
        # FastCGI
        "fastcgi/bad-version": ("fastcgi", fcgi_begin(1)[:0] + fcgi_record(1, 1, b"\0\x01\0\0\0\0\0\0", version=rng.choice([0, 2, 255])), "read"),
        "fastcgi/truncated-header": ("fastcgi", fcgi_begin(1)[:5], "close"),
        "fastcgi/length-overruns": ("fastcgi", fcgi_begin(1) + fcgi_record(4, 1, b"\x01\x01ab", length=1000), "close"),
        "fastcgi/request-id-0": ("fastcgi", fcgi_request(0, v), "read"),
        "fastcgi/params-unknown-id": ("fastcgi", fcgi_record(4, 7, fcgi_nv(v)) + fcgi_record(4, 7), "read"),
        "fastcgi/stdin-before-begin": ("fastcgi", fcgi_record(5, 1, b"hello") + fcgi_request(1, v), "read"),
        "fastcgi/unknown-role": ("fastcgi", fcgi_begin(1, role=rng.choice([0, 3, 99])) + fcgi_record(4, 1), "read"),
        "fastcgi/unknown-type": ("fastcgi", fcgi_record(rng.choice([0, 12, 42, 255]), 1, b"xx"), "read"),
        "fastcgi/name-length-overruns": ("fastcgi", fcgi_begin(1) + fcgi_record(4, 1, b"\xff\xff\xff\xff\x01ab") + fcgi_record(4, 1), "read"),
        "fastcgi/oversized-params": ("fastcgi", fcgi_begin(1) + b"".join(
            fcgi_record(4, 1, fcgi_nv([(b"X_PAD%d" % i, b"p" * 8000)])) for i in range(BUFFER_SIZE // 8000 + 2))
            + fcgi_record(4, 1), "read"),
        "fastcgi/huge-content-length-then-close": (
            "fastcgi", fcgi_begin(1) + fcgi_record(4, 1, fcgi_nv(cgi_vars(b"POST", b"/echo", big)))
            + fcgi_record(4, 1) + fcgi_record(5, 1, junk(10, 5000)), "close"),
        "fastcgi/multiplex-then-close": ("fastcgi", b"".join(
            fcgi_begin(i, keep=True) + fcgi_record(4, i, fcgi_nv(v)) for i in range(1, 65)), "close"),
        "fastcgi/abort-unknown-id": ("fastcgi", fcgi_record(2, 3), "read"),
        "fastcgi/duplicate-begin": ("fastcgi", fcgi_begin(1) + fcgi_begin(1) + fcgi_record(4, 1, fcgi_nv(v)) + fcgi_record(4, 1) + fcgi_record(5, 1), "read"),
        "fastcgi/huge-padding-truncated": ("fastcgi", fcgi_begin(1) + fcgi_record(4, 1, b"\x01\x01ab", padding=255)[:40], "close"),
        "fastcgi/get-values": ("fastcgi", fcgi_record(9, 0, fcgi_nv([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MPXS_CONNS", b"")])), "read"),
        "fastcgi/garbage": ("fastcgi", junk(1, 4096), "close"),
        "fastcgi/http-text": ("fastcgi", HTTP_TEXT, "read"),
        # SCGI
        "scgi/no-colon": ("scgi", b"1234567890" * 3, "close"),
        "scgi/bad-length": ("scgi", b"abc:CONTENT_LENGTH\x000\x00,", "read"),
        "scgi/huge-length": ("scgi", b"99999999:CONTENT_LENGTH\x000\x00", "close"),
        "scgi/missing-comma": ("scgi", scgi_request(v)[:-1] + b"X", "read"),
        "scgi/content-length-not-first": ("scgi", scgi_head([(b"SCGI", b"1"), (b"CONTENT_LENGTH", b"0")] + v), "read"),
        "scgi/unterminated-pair": ("scgi", b"16:CONTENT_LENGTH\x000\x00SC,", "read"),
        "scgi/oversized": ("scgi", scgi_request([(b"X_PAD", b"p" * (BUFFER_SIZE + 1000))] + v), "read"),
        "scgi/huge-content-length-then-close": (
            "scgi", scgi_head([(b"CONTENT_LENGTH", big), (b"SCGI", b"1")] + cgi_vars(b"POST", b"/echo")) + junk(10, 5000), "close"),
        "scgi/garbage": ("scgi", junk(1, 4096), "close"),
        "scgi/http-text": ("scgi", HTTP_TEXT, "read"),
    }


BAD_INPUT_NAMES = sorted(bad_inputs(random.Random(0)))


# --------------------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def unix_sockets() -> dict[int, tuple[bool, str]]:
    """Unix sockets by inode: (listening, bound path). A socket accepted on a named
    listener carries the listener's path."""
    out = {}
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 7:
                    out[int(parts[6])] = (bool(int(parts[3], 16) & 0x10000),  # __SO_ACCEPTCON
                                          parts[7] if len(parts) > 7 else "")
    except OSError:
        pass
    return out


def fds(pid: int, socks: dict, paths: set[str]) -> tuple[int, int] | None:
    """(descriptors that are not client connections, connections accepted on one of
    `paths`) of a process. postern's own socketpairs count with the former."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    other = conns = 0
    for n in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        info = socks.get(int(m.group(1))) if m else None
        if info and not info[0] and info[1] in paths:
            conns += 1
        else:
            other += 1
    return other, conns


# --------------------------------------------------------------------------- processes


class Instance:
    def __init__(self, name: str, tmp: Path):
        self.name = name
        self.socks = {p: tmp / f"{name}-{p}.sock" for p in ("uwsgi", "fastcgi", "scgi")}
        self.log = tmp / f"postern-{name}.log"
        self.proc: subprocess.Popen | None = None

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []


def start_postern(inst: Instance, binary: Path, venv: Path, tmp: Path) -> None:
    app = str(REPO / "benches" / "soak_app.py") if inst.name == "hello" else \
        str(REPO / "examples" / "flask_app.py") + ":app"
    cmd = [str(binary), app, "--venv", str(venv),
           "--uwsgi", f"unix:{inst.socks['uwsgi']}", "--fastcgi", f"unix:{inst.socks['fastcgi']}",
           "--scgi", f"unix:{inst.socks['scgi']}", "--socket-mode", "666",
           "--workers", str(WORKERS), "--threads", str(THREADS[inst.name]),
           "--buffer-size", str(BUFFER_SIZE), "--head-timeout", str(HEAD_TIMEOUT),
           "--graceful-timeout", "20", "--access-log", "off"]
    with open(inst.log, "ab") as out:
        inst.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     cwd=tmp, start_new_session=True)
    inst.cmd = cmd


def wait_ready(inst: Instance, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inst.proc.poll() is not None:
            die(f"postern {inst.name} exited with {inst.proc.returncode} at start-up:\n{tail(inst.log)}")
        if "all 2 workers ready" in inst.log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    die(f"postern {inst.name} not ready within {timeout:.0f}s:\n{tail(inst.log)}")


def nginx_conf(tmp: Path, insts: dict, ports: dict, errlog: Path) -> str:
    servers, upstreams = [], []
    for name, inst in insts.items():
        for proto in PROTOS:
            port = ports[(name, proto)]
            if proto == "uwsgi":
                loc = f"include /etc/nginx/uwsgi_params;\n            uwsgi_pass unix:{inst.socks['uwsgi']};"
            elif proto == "scgi":
                loc = f"include /etc/nginx/scgi_params;\n            scgi_pass unix:{inst.socks['scgi']};"
            else:
                upstreams.append(f"    upstream {name}_fcgi {{\n        server unix:{inst.socks['fastcgi']};\n"
                                 f"        keepalive {KEEPALIVE};\n    }}")
                loc = (f"include {REPO / 'deploy/nginx/fastcgi_params'};\n"
                       f"            fastcgi_pass {name}_fcgi;\n            fastcgi_keep_conn on;")
            servers.append(f"    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n"
                           f"            {loc}\n        }}\n    }}")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# generated by benches/soak.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {errlog} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body_temp;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    keepalive_requests 1000000;
    client_body_buffer_size 2m;
    client_max_body_size 4m;
    # Nothing the load asks takes more than a few seconds: a response that stalls is
    # logged ("upstream timed out") well before the soak ends.
    uwsgi_read_timeout 20s;
    fastcgi_read_timeout 20s;
    scgi_read_timeout 20s;
{chr(10).join(upstreams)}
{chr(10).join(servers)}
}}
"""


# --------------------------------------------------------------------------- the load


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.by_kind: dict[str, list[int]] = {}   # kind -> [sent, ok]
        self.failures: list[dict] = []
        self.per_pid: dict[int, int] = {}
        self.kills: list[dict] = []               # {instance, pid, t, wall}
        self.reloads: list[dict] = []
        self.faults: dict[str, dict[str, int]] = {}  # fault -> outcome -> count
        self.notes: list[str] = []
        self.venv_python: Path | None = None      # the flask instance's Python (werkzeug)

    def fault(self, name: str, outcome: str) -> None:
        with self.lock:
            d = self.faults.setdefault(name, {})
            d[outcome] = d.get(outcome, 0) + 1


# What examples/flask_app.py's /upload answers, computed by werkzeug alone (no server)
# from the exact bytes the soak sent, read in the 64 KiB blocks postern's wsgi.input
# gives a full read(65536): run in the flask instance's venv.
WERKZEUG_ALONE = r"""
import hashlib, io, json, sys
from importlib.metadata import version
from werkzeug.wrappers import Request
body = sys.stdin.buffer.read()
r = Request({"REQUEST_METHOD": "POST", "CONTENT_TYPE": sys.argv[1],
             "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
             "wsgi.input_terminated": True, "wsgi.url_scheme": "http",
             "SERVER_NAME": "soak", "SERVER_PORT": "80", "PATH_INFO": "/upload"})
f = r.files.get("file")
out = {"werkzeug": version("werkzeug")}
if f is not None:
    digest, size = hashlib.sha256(), 0
    while chunk := f.stream.read(64 * 1024):
        size += len(chunk)
        digest.update(chunk)
    out["answer"] = {"filename": f.filename, "size": size, "sha256": digest.hexdigest(),
                     "description": r.form.get("description", "")}
print(json.dumps(out))
"""


def werkzeug_alone(python: Path | None, body: bytes, content_type: str, answer: bytes) -> str | None:
    """A flask-upload answered 200 with a wrong file: when werkzeug alone, given the
    bytes the soak sent, gives that same wrong answer, the fault is its multipart
    parser's (werkzeug 3.1.5 to at least 3.1.9 add a stray CR to a file when a 64 KiB
    read block ends between the two final dashes of its closing delimiter,
    pallets/werkzeug#3285; any server shows it), not postern's: postern passed the
    bytes whole. Returns what to say then, None otherwise (or when it cannot tell)."""
    if python is None:
        return None
    try:
        got = json.loads(answer)
        run = subprocess.run([str(python), "-c", WERKZEUG_ALONE, content_type], input=body,
                             capture_output=True, timeout=120)
        alone = json.loads(run.stdout)
    except (ValueError, OSError, subprocess.SubprocessError):
        return None
    if alone.get("answer") != got:
        return None
    return (f"werkzeug {alone['werkzeug']} alone gives this same wrong file from the bytes sent "
            f"(its multipart parser's bug, e.g. pallets/werkzeug#3285), so postern passed them whole")


def stream_bytes(seed: int, n: int, size: int) -> tuple[int, str]:
    h = hashlib.sha256()
    for i in range(n):
        unit = b"%d.%d|" % (seed, i)
        h.update((unit * (size // len(unit) + 1))[:size])
    return n * size, h.hexdigest()


class Client:
    """One load thread: keep-alive connections to each nginx server, one request at a
    time, each answer verified."""

    def __init__(self, idx: int, seed: int, ports: dict, stats: Stats, rid_counter, kinds=tuple(KINDS)):
        self.rng = random.Random(f"{seed}/client/{idx}")
        self.ports = ports
        self.stats = stats
        self.conns: dict[int, http.client.HTTPConnection] = {}
        self.rid = rid_counter
        self.kinds = kinds

    def conn(self, port: int) -> http.client.HTTPConnection:
        c = self.conns.get(port)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
            self.conns[port] = c
        return c

    def drop(self, port: int) -> None:
        c = self.conns.pop(port, None)
        if c is not None:
            c.close()

    def pick(self):
        rng = self.rng
        proto = rng.choices(PROTOS, weights=(45, 45, 10))[0]
        kinds = [(k, w) for k, w in KINDS.items() if k in self.kinds]
        kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        return proto, kind

    def one(self, stop: threading.Event) -> None:
        rng = self.rng
        proto, kind = self.pick()
        inst = "flask" if kind.startswith("flask") else "hello"
        port = self.ports[(inst, proto)]
        rid = next(self.rid)
        headers = {}
        body = None
        method = "GET"
        expect_status = 200
        check = None
        if kind == "hello":
            path = f"/?rid={rid}"
            check = lambda b: b == b"Hello, World!\n"  # noqa: E731
        elif kind == "echo":
            n = rng.choice([0, rng.randint(1, 4096), rng.randint(1, 256 << 10), rng.randint(256 << 10, 1 << 20), 1 << 20])
            body = rng.randbytes(n)
            method, path = "POST", f"/echo?rid={rid}"
            headers["Content-Type"] = "application/octet-stream"
            want = b"%d %s\n" % (n, hashlib.sha256(body).hexdigest().encode())
            check = lambda b: b == want  # noqa: E731
        elif kind == "stream":
            n, size, seed = rng.randint(1, 64), rng.randint(1, 32 << 10), rng.randrange(1 << 40)
            delay = rng.choice(["0", "0", "0", "0.01", "0.05"])
            path = f"/stream?n={n}&size={size}&seed={seed}&delay={delay}&rid={rid}"
            want = stream_bytes(seed, n, size)
            check = lambda b: (len(b), hashlib.sha256(b).hexdigest()) == want  # noqa: E731
        elif kind == "flask-index":
            path = f"/?rid={rid}"
            check = lambda b: b == b"Hello from Flask\n"  # noqa: E731
        elif kind == "flask-form":
            name = "n%d" % rng.randrange(10 ** 9)
            method, path = "POST", f"/form?rid={rid}"
            body = f"name={name}".encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            check = lambda b: b == f"Hello, {name}!\n".encode()  # noqa: E731
        elif kind == "flask-upload":
            data = rng.randbytes(rng.choice([rng.randint(1, 64 << 10), rng.randint(64 << 10, 1 << 20), 1 << 20]))
            boundary = "soak%016x" % rng.randrange(1 << 64)
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nsoak {rid}\r\n"
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f{rid}.bin\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
            method, path = "POST", f"/upload?rid={rid}"
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            want = {"filename": f"f{rid}.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "description": f"soak {rid}"}
            check = lambda b: json.loads(b) == want  # noqa: E731
        elif kind == "flask-api":
            item = {"name": "item%d" % rid, "price": rng.randint(0, 10000) / 100}
            body = json.dumps(item).encode()
            method, path, expect_status = "POST", f"/api/items?rid={rid}", 201
            headers["Content-Type"] = "application/json"

            def check(b, item=item):
                got = json.loads(b)
                return got.get("name") == item["name"] and got.get("price") == item["price"]
        else:  # flask-stream
            path = f"/stream?rid={rid}"
            check = lambda b: b == b"".join(b"chunk %d\n" % i for i in range(5))  # noqa: E731
        key = f"{inst}/{kind}/{proto}"
        t0 = time.monotonic()
        err = None
        third_party = None
        pid = None
        for attempt in (0, 1):
            c = self.conn(port)
            try:
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                if r.status != expect_status:
                    title = re.search(rb"<title>([^<]*)</title>", data[:400])
                    err = f"HTTP {r.status}: " + (title.group(1).decode(errors="replace") if title else repr(data[:160]))
                elif not check(data):
                    err = f"wrong body ({len(data)} bytes): {data[:120]!r}"
                    if kind == "flask-upload":
                        third_party = werkzeug_alone(self.stats.venv_python, body,
                                                     headers["Content-Type"], data)
                pid = r.getheader("X-Pid")
                if r.will_close:
                    self.drop(port)
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # nginx closed a kept-alive client connection between two requests (its
                # keepalive_timeout): the request never reached it; http.client's own
                # retry rule. Only on a reused connection and only once.
                self.drop(port)
                if attempt == 0 and getattr(c, "_soak_used", False) and time.monotonic() - t0 < 0.5:
                    continue
                err = f"{type(e).__name__}: {e}"
                break
            except Exception as e:  # noqa: BLE001 (timeouts, JSON errors, ...)
                self.drop(port)
                err = f"{type(e).__name__}: {e}"
                break
            finally:
                c._soak_used = True
        t1 = time.monotonic()
        with self.stats.lock:
            self.stats.sent += 1
            k = self.stats.by_kind.setdefault(key, [0, 0])
            k[0] += 1
            if err is None:
                self.stats.ok += 1
                k[1] += 1
                if pid:
                    self.stats.per_pid[int(pid)] = self.stats.per_pid.get(int(pid), 0) + 1
            else:
                self.stats.failures.append({"rid": rid, "key": key, "instance": inst, "t0": t0, "t1": t1,
                                            "wall": time.time(), "error": err, "method": method, "path": path,
                                            "third_party": third_party})

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.one(stop)
        for p in list(self.conns):
            self.drop(p)


# --------------------------------------------------------------------------- faults


def send_raw(path: Path, data: bytes, then: str, timeout: float) -> str:
    """Send bad bytes to a listener; the outcome: what the server did."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return "closed-while-sending"
        if then == "close":
            s.shutdown(socket.SHUT_WR)
        got = b""
        t0 = time.monotonic()
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                return "reset" + (" after an answer" if got else "")
            if not b:
                break
            got += b
            if len(got) > 1 << 20:
                break
        if not got:
            return "closed" if time.monotonic() - t0 < HEAD_TIMEOUT - 0.5 else "closed at head-timeout"
        m = re.search(rb"(?:HTTP/1\.[01]|Status:) (\d{3})", got[:400])
        if m:
            return f"answered {m.group(1).decode()}"
        if got[:1] == b"\x01":
            return f"fastcgi records (type {got[1]})"
        return "answered bytes"
    except socket.timeout:
        return "timeout (no answer, not closed)"
    except OSError as e:
        return f"error {e.__class__.__name__}"
    finally:
        s.close()


class Faults:
    def __init__(self, seed: int, args, insts: dict, ports: dict, stats: Stats):
        self.seed = seed
        self.args = args
        self.insts = insts
        self.ports = ports
        self.stats = stats
        self.threads: list[threading.Thread] = []
        scale = args.duration / 1800
        self.reload_every = max(6.0, 60 * scale)
        self.kill_every = max(12.0, 120 * scale)

    def rng(self, what: str) -> random.Random:
        return random.Random(f"{self.seed}/{what}")

    def spawn(self, target, *a) -> None:
        t = threading.Thread(target=target, args=a, daemon=True)
        t.start()
        self.threads.append(t)

    def loop(self, what: str, mean: float, stop: threading.Event, action) -> None:
        rng = self.rng(what)
        while not stop.wait(rng.uniform(0.5 * mean, 1.5 * mean)):
            action(rng, stop)

    def start(self, stop: threading.Event) -> None:
        loops = {"reload": (self.reload_every, self.reload), "kill": (self.kill_every, self.kill),
                 "bad": (0.7, self.bad_input), "idle": (8.0, self.idle), "loris": (6.0, self.loris),
                 "stall": (8.0, self.stall)}
        for what in self.args.faults:
            mean, action = loops[what]
            self.spawn(self.loop, what, mean, stop, action)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def reload(self, rng, stop) -> None:
        for inst in self.insts.values():
            os.kill(inst.proc.pid, signal.SIGHUP)
            with self.stats.lock:
                self.stats.reloads.append({"instance": inst.name, "t": time.monotonic(), "wall": time.time()})
        self.stats.fault("reload (SIGHUP, each instance)", "sent")

    def kill(self, rng, stop) -> None:
        inst = self.insts[rng.choice(INSTANCES)]
        ws = inst.workers()
        if not ws:
            self.stats.fault("SIGKILL a worker", "no worker to kill")
            return
        pid = rng.choice(sorted(ws))
        t = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.stats.fault("SIGKILL a worker", "already gone")
            return
        with self.stats.lock:
            self.stats.kills.append({"instance": inst.name, "pid": pid, "t": t, "wall": time.time()})
        self.stats.fault("SIGKILL a worker", "killed")

    def bad_input(self, rng, stop) -> None:
        catalog = bad_inputs(rng)
        name = rng.choice(sorted(catalog))
        proto, data, then = catalog[name]
        inst = self.insts[rng.choice(INSTANCES)]
        self.stats.fault("bad input: " + name, send_raw(inst.socks[proto], data, then, HEAD_TIMEOUT + 5))

    def idle(self, rng, stop) -> None:
        inst = self.insts[rng.choice(INSTANCES)]
        proto = rng.choice(("uwsgi", "fastcgi", "scgi"))
        n, hold = rng.randint(1, 40), rng.uniform(1, 2 * HEAD_TIMEOUT)
        self.spawn(self._idle, inst.socks[proto], n, hold, f"idle connections ({proto})", stop)

    def _idle(self, path: Path, n: int, hold: float, name: str, stop) -> None:
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                s.setblocking(False)
                socks.append(s)
            except OSError:
                s.close()
                self.stats.fault(name, "connect failed")
        t0 = time.monotonic()
        stop.wait(hold)
        held = time.monotonic() - t0

        def still_open():
            out = []
            for s in socks:
                try:
                    if s.recv(1) == b"":
                        continue
                except BlockingIOError:
                    out.append(s)
                except OSError:
                    continue
            return out

        open_ = still_open()
        if held <= HEAD_TIMEOUT + 2:
            self.stats.fault(name, "closed by us before head-timeout")
        elif not open_:
            self.stats.fault(name, "held past head-timeout: all closed by postern")
        else:
            # Accepted late (--head-timeout counts from accept: a worker whose Python
            # threads are all busy, or one booting, leaves new connections in the
            # listen queue) or never closed: closes up to IDLE_LATE after that are
            # counted as late, with how long after connect the last one closed (a
            # figure: the machine's load decides it); a connection still open then is
            # a bug. The timeout of an accepted connection no longer waits for a free
            # Python thread (the I/O thread keeps it).
            deadline = time.monotonic() + IDLE_LATE
            while open_ and time.monotonic() < deadline:
                time.sleep(0.2)
                open_ = still_open()
            if not open_:
                self.stats.fault(name, "held past head-timeout: closed by postern late")
                after = int((time.monotonic() - t0) * 1000)
                with self.stats.lock:
                    d = self.stats.faults.setdefault("idle connections closed late", {})
                    d["batches"] = d.get("batches", 0) + 1
                    d["last closed, ms after connect (max)"] = max(
                        d.get("last closed, ms after connect (max)", 0), after)
            else:
                self.stats.fault(name, BUG_MARK + f"connections still open {IDLE_LATE:.1f}s after we "
                                 f"had held them past --head-timeout {HEAD_TIMEOUT}")
                self.stats.fault(name, f"(connections left open: {len(open_)} of {len(socks)})")
        for s in socks:
            s.close()
        with self.stats.lock:
            d = self.stats.faults.setdefault("idle connections (all, opened)", {})
            d["connections"] = d.get("connections", 0) + len(socks)

    def loris(self, rng, stop) -> None:
        inst = self.insts[rng.choice(INSTANCES)]
        proto = rng.choice(("uwsgi", "fastcgi", "scgi"))
        body = rng.random() < 0.4
        if body:
            pairs = cgi_vars(b"POST", b"/echo", b"100")
            data, head = head_for(proto, pairs), None
            if proto == "fastcgi":
                data = fcgi_begin(1) + fcgi_record(4, 1, fcgi_nv(pairs)) + fcgi_record(4, 1)
            head = data
            trickle = b"b" * 100 if proto != "fastcgi" else fcgi_record(5, 1, b"b" * 100) + fcgi_record(5, 1)
        else:
            head, trickle = b"", head_for(proto)
        interval = rng.uniform(0.2, 1.0)
        self.spawn(self._loris, inst.socks[proto], head, trickle, interval,
                   f"slow-loris {'body' if body else 'head'} ({proto})", stop)

    def _loris(self, path: Path, head: bytes, trickle: bytes, interval: float, name: str, stop) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        t0 = time.monotonic()
        outcome = None
        try:
            s.connect(str(path))
            s.sendall(head)
            for i in range(len(trickle)):
                if stop.is_set():
                    outcome = "soak stopped"
                    break
                s.sendall(trickle[i:i + 1])  # EPIPE once postern has closed
                if "head" in name and time.monotonic() - t0 > HEAD_TIMEOUT + LORIS_SLACK:
                    # A head must be complete within --head-timeout (the slack covers a
                    # late accept by a busy or booting worker); this one is still read.
                    outcome = BUG_MARK + f"head still read {HEAD_TIMEOUT + LORIS_SLACK:.0f}s after connect " \
                                         f"(--head-timeout {HEAD_TIMEOUT})"
                    break
                if time.monotonic() - t0 > LORIS_BODY_SECS:
                    # A body may be trickled (--read-timeout is between two reads).
                    outcome = f"still read after {LORIS_BODY_SECS:.0f} s, we closed"
                    break
                stop.wait(interval)
            if outcome is None:
                s.shutdown(socket.SHUT_WR)
                outcome = "sent whole: " + ("answered" if s.recv(4096) else "closed")
        except (BrokenPipeError, ConnectionResetError):
            el = time.monotonic() - t0
            outcome = "closed by postern" + (" at head-timeout" if abs(el - HEAD_TIMEOUT) < 1.5 and "head" in name else "")
        except socket.timeout:
            outcome = "timeout waiting for an answer"
        except OSError as e:
            outcome = f"error {e.__class__.__name__}"
        finally:
            s.close()
        self.stats.fault(name, outcome)

    def stall(self, rng, stop) -> None:
        proto = rng.choice(PROTOS)
        port = self.ports[("hello", proto)]
        read = rng.randint(16 << 10, 512 << 10)
        pause = rng.uniform(1, 8)
        self.spawn(self._stall, port, proto, read, pause, rng.randrange(1 << 40), stop)

    def _stall(self, port: int, proto: str, read: int, pause: float, seed: int, stop) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", f"/stream?n=400&size=16384&seed={seed}&rid=stall")
            r = c.getresponse()
            got = r.read(read)
            _, _ = len(got), stop.wait(pause)
            self.stats.fault(f"stream read half-way, stalled, closed ({proto})",
                             "stalled after %s" % ("part" if len(got) == read else f"only {len(got)} bytes"))
        except Exception as e:  # noqa: BLE001
            self.stats.fault(f"stream read half-way, stalled, closed ({proto})", f"error {type(e).__name__}")
        finally:
            c.close()


# --------------------------------------------------------------------------- logs


NGX_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$")


def ngx_class(msg: str) -> str:
    text = msg.split(", client:")[0]
    text = re.sub(r"\d+", "N", text)
    return text[:160]


def classify_nginx(errlog: Path, stats: Stats, insts: dict, expected_rids: set, failed_rids: set):
    """nginx error-log entries of level warn and worse: per class, expected or not."""
    kills = [(k["instance"], k["wall"]) for k in stats.kills]
    out = {"expected": {}, "unexpected": {}, "warn": {}, "unexpected_lines": []}
    try:
        lines = errlog.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = NGX_LINE.match(line)
        if not m:
            continue
        when, level, msg = m.groups()
        cls = ngx_class(msg)
        if level not in ("error", "crit", "alert", "emerg"):
            out["warn"][cls] = out["warn"].get(cls, 0) + 1
            continue
        rid = re.search(r'request: "\w+ [^"]*[?&]rid=(\w+)', msg)
        up = re.search(r'upstream: "\w+://unix:[^"]*/(\w+)-\w+\.sock', msg)
        t = time.mktime(time.strptime(when, "%Y/%m/%d %H:%M:%S"))
        near_kill = any((up is None or up.group(1) == i) and -1 <= t - w <= 2 + KILL_GRACE for i, w in kills)
        if rid and rid.group(1).isdigit():
            ok = int(rid.group(1)) in expected_rids or (int(rid.group(1)) not in failed_rids and near_kill)
        elif rid:  # the stalled streams (rid=stall): a client that went away
            ok = near_kill or "client" in msg
        else:
            ok = near_kill
        bucket = "expected" if ok else "unexpected"
        out[bucket][cls] = out[bucket].get(cls, 0) + 1
        if not ok:
            near = [f"{r['instance']} reload {t - r['wall']:+.0f}s" for r in stats.reloads if -1 <= t - r["wall"] <= 3]
            out["unexpected_lines"].append(line + (f"  [near: {', '.join(near[:2])}]" if near else ""))
    return out


PST_LINE = re.compile(r"^\S+\s+(ERROR|WARN|INFO|DEBUG|TRACE)\s+(\S+): (.*)$")


def classify_postern(inst: Instance, stats: Stats) -> dict:
    killed = {k["pid"] for k in stats.kills if k["instance"] == inst.name}
    out = {"deaths_killed": 0, "deaths_unexpected": [], "panics": [], "errors": {}, "warnings": {},
           "reloads_done": 0}
    # Old-generation workers still importing when a reload's new workers are ready: the
    # master kills them (they never served), e.g. a replacement of a worker the soak
    # killed just before a SIGHUP. Their SIGKILL is the master's, by design.
    never_served: set[int] = set()
    for line in inst.log.read_text(errors="replace").splitlines():
        if "panicked" in line:
            out["panics"].append(line)
        m = PST_LINE.match(line)
        if not m:
            continue
        level, _, msg = m.groups()
        if "old workers still importing the app are killed" in msg:
            listed = re.search(r"\bpids=\[([\d, ]*)\]", msg)
            if listed:
                never_served.update(int(p) for p in re.findall(r"\d+", listed.group(1)))
            continue
        # A worker of the serving generation that dies is "died unexpectedly"; an old
        # one that dies while it drains after a reload is "died unexpectedly while it
        # finished its requests to leave" (cause=crash); "worker exited" is any other
        # exit.
        if "worker died unexpectedly" in msg or ("worker exited" in msg and "exit code 0" not in msg):
            pid = re.search(r"\bpid=(\d+)", msg)
            pid = int(pid.group(1)) if pid else None
            if pid in killed and "SIGKILL" in msg:
                out["deaths_killed"] += 1
            elif pid in never_served and "SIGKILL" in msg and "cause=\"reload\"" in msg:
                out["deaths_never_served"] = out.get("deaths_never_served", 0) + 1
            else:
                out["deaths_unexpected"].append(line)
            continue
        if "new workers ready" in msg:
            out["reloads_done"] += 1
        if level in ("ERROR", "WARN"):
            cls = re.sub(r"\b\w+=(\"[^\"]*\"|\S+)", "", msg)
            cls = re.sub(r"\d+", "N", cls).strip()[:160]
            d = out["errors" if level == "ERROR" else "warnings"]
            d[cls] = d.get(cls, 0) + 1
    return out


# --------------------------------------------------------------------------- measures


def sample(insts: dict) -> dict:
    socks = unix_sockets()
    out = {}
    for name, inst in insts.items():
        m = inst.proc.pid
        paths = {str(p) for p in inst.socks.values()}
        ws = []
        for pid in inst.workers():
            r, f = rss_kib(pid), fds(pid, socks, paths)
            if r is not None and f is not None:
                ws.append({"pid": pid, "rss_kib": r, "fds": f[0], "conns": f[1]})
        f = fds(m, socks, paths) or (0, 0)
        out[name] = {"master": {"pid": m, "rss_kib": rss_kib(m) or 0, "fds": f[0], "conns": f[1]},
                     "workers": ws}
    return out


def compare(start: dict, end: dict) -> list[dict]:
    """End against start, per instance; each check with its tolerance and verdict."""
    checks = []
    for name in start:
        s, e = start[name], end[name]
        d = (e["master"]["rss_kib"] - s["master"]["rss_kib"]) / 1024
        checks.append({"what": f"{name}: master RSS", "start": s["master"]["rss_kib"] / 1024,
                       "end": e["master"]["rss_kib"] / 1024, "unit": "MiB",
                       "limit": f"+{MASTER_RSS_MIB} MiB", "ok": d <= MASTER_RSS_MIB})
        for k in ("fds", "conns"):
            checks.append({"what": f"{name}: master {'fds (not connections)' if k == 'fds' else 'connections'}",
                           "start": s["master"][k], "end": e["master"][k], "unit": "",
                           "limit": f"+{FD_SLACK}", "ok": e["master"][k] <= s["master"][k] + FD_SLACK})
        if not s["workers"] or not e["workers"]:
            checks.append({"what": f"{name}: workers", "start": len(s["workers"]), "end": len(e["workers"]),
                           "unit": "", "limit": "some", "ok": False})
            continue
        sr = statistics.mean(w["rss_kib"] for w in s["workers"]) / 1024
        er = statistics.mean(w["rss_kib"] for w in e["workers"]) / 1024
        lim = max(WORKER_RSS_MIB, WORKER_RSS_FRAC * sr)
        checks.append({"what": f"{name}: worker RSS (mean)", "start": sr, "end": er, "unit": "MiB",
                       "limit": f"+{lim:.1f} MiB", "ok": er - sr <= lim})
        sf = statistics.mean(w["fds"] for w in s["workers"])
        ef = statistics.mean(w["fds"] for w in e["workers"])
        checks.append({"what": f"{name}: worker fds, not connections (mean)", "start": sf, "end": ef, "unit": "",
                       "limit": f"+{FD_SLACK}", "ok": ef - sf <= FD_SLACK})
        # nginx keeps up to KEEPALIVE FastCGI connections per instance; nothing else may
        # stay connected once the load is paused.
        ec = sum(w["conns"] for w in e["workers"])
        sc = sum(w["conns"] for w in s["workers"])
        checks.append({"what": f"{name}: worker connections (sum)", "start": sc, "end": ec, "unit": "",
                       "limit": f"<= {KEEPALIVE} (nginx keepalive)", "ok": ec <= KEEPALIVE})
    return checks


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="postern behind nginx under faults: a soak with a verdict.")
    ap.add_argument("--duration", type=float, default=1800, help="seconds of load in all (default 1800)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault schedule and the load (default: random, printed)")
    ap.add_argument("--postern-bin", default=None,
                    help="postern binary (default: target/release/postern, else target/debug/postern)")
    ap.add_argument("--venv", default=str(REPO / ".venv"), help="venv with Flask (default .venv)")
    ap.add_argument("--concurrency", type=int, default=4, help="load threads (default 4)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of load without faults at the start and at the end (default: duration/30, 10..60)")
    ap.add_argument("--json", default=None, help="write the report as JSON to this file ('-': stdout)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, confs)")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"faults to inject, comma-separated (default all: {','.join(FAULTS)}); narrows a reproducer")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"request kinds of the load (default all: {','.join(KINDS)})")
    args = ap.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    args.kinds = [k for k in args.kinds.split(",") if k]
    for f in args.faults:
        if f not in FAULTS:
            ap.error(f"--faults: unknown fault {f!r} (known: {', '.join(FAULTS)})")
    for k in args.kinds:
        if k not in KINDS:
            ap.error(f"--kinds: unknown kind {k!r} (known: {', '.join(KINDS)})")
    if not args.kinds:
        ap.error("--kinds: at least one")
    return args


def find_binary(arg: str | None) -> Path:
    if arg:
        p = Path(arg).resolve()
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        p = next((target / b / "postern" for b in ("release", "debug") if (target / b / "postern").exists()), None)
        if p is None:
            die("no postern binary: cargo build --release (or give --postern-bin)")
    if not os.access(p, os.X_OK):
        die(f"{p} is not an executable file")
    return p


def load_phase(secs: float, seed: int, tag: str, args, ports, stats, rid) -> None:
    stop = threading.Event()
    clients = [Client(i, seed, ports, stats, rid, args.kinds) for i in range(args.concurrency)]
    for c in clients:
        c.rng = random.Random(f"{seed}/{tag}/{clients.index(c)}")
    ts = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in ts:
        t.start()
    stop.wait(secs)
    stop.set()
    for t in ts:
        t.join(90)


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    binary = find_binary(args.postern_bin)
    venv = Path(args.venv).resolve()
    if not (venv / "bin" / "python").exists():
        die(f"no venv at {venv} (python3 -m venv .venv && .venv/bin/pip install -r examples/requirements.txt)")
    if not os.access(NGINX, os.X_OK):
        die(f"{NGINX} not found (apt-get install nginx)")
    warm = args.warmup if args.warmup is not None else min(60.0, max(10.0, args.duration / 30))
    fault_secs = max(10.0, args.duration - 2 * warm)
    log(f"soak: seed {seed} (replay with --seed {seed}); postern {binary}; {args.duration:.0f}s: "
        f"{warm:.0f}s warm-up, {fault_secs:.0f}s of faults, {warm:.0f}s warm-up again")

    tmp = Path(tempfile.mkdtemp(prefix="postern-soak-"))
    insts = {n: Instance(n, tmp) for n in INSTANCES}
    ports = {(n, p): free_port() for n in INSTANCES for p in PROTOS}
    errlog = tmp / "nginx-error.log"
    nginx = None
    stats = Stats()
    stats.venv_python = venv / "bin" / "python"
    rid = iter(range(1, 1 << 62))
    rid_lock = threading.Lock()

    class Rid:
        def __next__(self):
            with rid_lock:
                return next(rid)

    rids = Rid()
    report: dict = {"seed": seed, "duration": args.duration, "binary": str(binary), "tmp": str(tmp)}
    t_begin = time.monotonic()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    bugs: list[str] = []
    try:
        for inst in insts.values():
            start_postern(inst, binary, venv, tmp)
        for inst in insts.values():
            wait_ready(inst)
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, insts, ports, errlog))
        with open(tmp / "nginx.out", "ab") as out:
            nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-e", str(errlog), "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", ports[("hello", "uwsgi")]), timeout=1):
                    break
            except OSError:
                if nginx.poll() is not None or time.monotonic() > deadline:
                    die(f"nginx did not start:\n{tail(errlog)}\n{tail(tmp / 'nginx.out')}")
                time.sleep(0.1)

        log(f"== warm-up ({warm:.0f}s, load only)")
        load_phase(warm, seed, "warm-start", args, ports, stats, rids)
        time.sleep(1)
        start = sample(insts)
        stop = threading.Event()
        faults = Faults(seed, args, insts, ports, stats)
        log(f"== faults ({fault_secs:.0f}s): reload every ~{faults.reload_every:.0f}s, SIGKILL every "
            f"~{faults.kill_every:.0f}s, bad input, idle, slow-loris, stalled streams")
        samples = []
        sampler_stop = threading.Event()

        def sampler():
            while not sampler_stop.wait(SAMPLE_EVERY):
                samples.append({"t": round(time.monotonic() - t_begin, 1), **sample(insts)})
                for inst in insts.values():
                    if inst.proc.poll() is not None:
                        return
        st = threading.Thread(target=sampler, daemon=True)
        st.start()
        faults.start(stop)
        clients = [Client(i, seed, ports, stats, rids, args.kinds) for i in range(args.concurrency)]
        cts = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
        for t in cts:
            t.start()
        t_end = time.monotonic() + fault_secs
        next_note = time.monotonic() + 30
        while time.monotonic() < t_end:
            time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
            for inst in insts.values():
                if inst.proc.poll() is not None:
                    bugs.append(f"postern {inst.name} (master) exited with {inst.proc.returncode} during the soak")
            if nginx.poll() is not None:
                bugs.append("nginx exited during the soak")
            if bugs:
                break
            if time.monotonic() >= next_note:
                next_note += 30
                with stats.lock:
                    log(f"   {time.monotonic() - t_begin:5.0f}s: {stats.sent} requests, {len(stats.failures)} failed, "
                        f"{len(stats.kills)} kills, {len(stats.reloads) // 2} reloads")
        stop.set()
        for t in cts:
            t.join(90)
        faults.join(40)
        sampler_stop.set()
        if not bugs:
            # One more reload, so the workers measured at the end are as old as those
            # measured at the start, and have served the same load.
            log(f"== faults stopped; one reload, then the warm-up again ({warm:.0f}s)")
            time.sleep(HEAD_TIMEOUT + 1)  # idle and slow-loris connections timed out
            for inst in insts.values():
                old = set(inst.workers())
                os.kill(inst.proc.pid, signal.SIGHUP)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    now = set(inst.workers())
                    if len(now) == WORKERS and not (now & old):
                        break
                    time.sleep(0.2)
                else:
                    bugs.append(f"postern {inst.name}: the final reload did not replace the workers within 60 s")
            with stats.lock:
                n_before = stats.sent
            load_phase(warm, seed, "warm-end", args, ports, stats, rids)
            time.sleep(1)
            end = sample(insts)
            report["warm_end_requests"] = stats.sent - n_before
        else:
            end = sample(insts)
        time.sleep(0.5)
    except KeyboardInterrupt:
        log("soak: interrupted")
        bugs.append("interrupted")
        end = start = None
    finally:
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(nginx.pid, signal.SIGKILL)
        for inst in insts.values():
            if inst.proc is None:
                continue
            if inst.proc.poll() is None:
                inst.proc.send_signal(signal.SIGTERM)
                try:
                    rc = inst.proc.wait(30)
                    if rc != 0:
                        bugs.append(f"postern {inst.name} stopped with exit code {rc}")
                except subprocess.TimeoutExpired:
                    bugs.append(f"postern {inst.name} did not stop within 30 s of SIGTERM")
            try:
                os.killpg(inst.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    wall = time.monotonic() - t_begin

    # ---- verdict
    kills = stats.kills
    expected, unexpected, third_party = [], [], []
    for f in stats.failures:
        if f["third_party"]:
            third_party.append(f)
            continue
        hit = [k for k in kills if k["instance"] == f["instance"] and f["t0"] - KILL_GRACE <= k["t"] <= f["t1"]]
        (expected if hit else unexpected).append(f)
    for f in unexpected:
        near = [f"reload {f['t0'] - r['t']:+.2f}s" for r in stats.reloads
                if r["instance"] == f["instance"] and -2 <= f["t0"] - r["t"] <= 5]
        f["near"] = near[:2]
    exp_rids = {f["rid"] for f in expected}
    nginx_cls = classify_nginx(errlog, stats, insts, exp_rids, {f["rid"] for f in stats.failures})
    pst = {n: classify_postern(i, stats) for n, i in insts.items()}
    checks = compare(start, end) if start and end else []

    if unexpected:
        bugs.append(f"{len(unexpected)} failed request(s) not explained by a SIGKILL")
    if nginx_cls["unexpected"]:
        bugs.append(f"{sum(nginx_cls['unexpected'].values())} nginx upstream error(s) not explained by a SIGKILL")
    for n, p in pst.items():
        if p["deaths_unexpected"]:
            bugs.append(f"postern {n}: {len(p['deaths_unexpected'])} worker(s) died without a SIGKILL from the soak")
        if p["panics"]:
            bugs.append(f"postern {n}: {len(p['panics'])} panic(s) in its log")
    for c in checks:
        if not c["ok"]:
            bugs.append(f"not flat: {c['what']} {c['start']:.1f} -> {c['end']:.1f} (limit {c['limit']})")
    for name, outs in stats.faults.items():
        for o, n in outs.items():
            if o.startswith(BUG_MARK):
                bugs.append(f"{name}: {o[len(BUG_MARK):]} ({n}x)")
    if stats.ok == 0:
        bugs.append("no request succeeded")

    # ---- report
    growth = worker_growth(samples if 'samples' in locals() else [], stats.per_pid)
    report.update({
        "wall_seconds": round(wall, 1),
        "requests": {"sent": stats.sent, "ok": stats.ok, "failed": len(stats.failures),
                     "failed_expected": len(expected), "failed_unexpected": len(unexpected),
                     "failed_third_party": len(third_party),
                     "by_kind": {k: {"sent": v[0], "ok": v[1]} for k, v in sorted(stats.by_kind.items())}},
        "unexpected_failures": [{k: v for k, v in f.items() if k not in ("t0", "t1")} for f in unexpected[:50]],
        "expected_failures": [{k: v for k, v in f.items() if k not in ("t0", "t1")} for f in expected[:50]],
        "third_party_failures": [{k: v for k, v in f.items() if k not in ("t0", "t1")} for f in third_party[:50]],
        "kills": len(kills), "reloads": len(stats.reloads),
        "kill_list": [{"instance": k["instance"], "pid": k["pid"],
                       "utc": time.strftime("%H:%M:%S", time.gmtime(k["wall"])) + f".{int(k['wall'] % 1 * 1000):03d}"}
                      for k in kills],
        "faults": stats.faults,
        "nginx_errors": nginx_cls,
        "postern": pst,
        "memory": {"start": start, "end": end, "checks": checks, "worker_growth": growth},
        "bugs": bugs,
        "verdict": "FAIL" if bugs else "PASS",
    })
    print_summary(report)
    if args.json:
        text = json.dumps(report, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if bugs or args.keep_tmp:
        log(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bugs else 0


def worker_growth(samples: list, per_pid: dict) -> dict:
    """Within each worker's life (hello instance, where requests per worker are known):
    RSS from its first to its last sample; the median and the largest."""
    first, last = {}, {}
    for s in samples:
        for name in INSTANCES:
            for w in s.get(name, {}).get("workers", []):
                first.setdefault((name, w["pid"]), w["rss_kib"])
                last[(name, w["pid"])] = w["rss_kib"]
    out = {}
    for name in INSTANCES:
        g = [(last[k] - first[k]) / 1024 for k in first if k[0] == name and k in last]
        if g:
            out[name] = {"workers": len(g), "median_mib": round(statistics.median(g), 2), "max_mib": round(max(g), 2)}
    reqs = [v for v in per_pid.values()]
    if reqs:
        out["hello_requests_per_worker_median"] = statistics.median(reqs)
    return out


def print_summary(r: dict) -> None:
    q = r["requests"]
    log("")
    log(f"== soak summary (seed {r['seed']}, {r['wall_seconds']:.0f}s wall, {r['binary']})")
    lib = q.get("failed_third_party", 0)
    lib = f", {lib} the app's own library's" if lib else ""
    log(f"requests: {q['sent']} sent, {q['ok']} ok, {q['failed']} failed "
        f"({q['failed_expected']} in flight during a SIGKILL, {q['failed_unexpected']} unexpected{lib})")
    for k, v in q["by_kind"].items():
        log(f"   {k:32} {v['sent']:7} sent {v['sent'] - v['ok']:5} failed")
    for f in r["unexpected_failures"][:20]:
        log(f"   UNEXPECTED rid={f['rid']} {f['key']} {f['method']} {f['path'][:60]}: {f['error'][:160]}"
            f"{' (near ' + ', '.join(f['near']) + ')' if f.get('near') else ''}")
    for f in r["expected_failures"][:5]:
        log(f"   expected   rid={f['rid']} {f['key']}: {f['error'][:120]}")
    for f in r.get("third_party_failures", [])[:5]:
        log(f"   not postern rid={f['rid']} {f['key']}: {f['third_party']}")
    log(f"faults injected: {r['kills']} SIGKILLs (one worker each), {r['reloads'] // len(INSTANCES)} reloads "
        f"(SIGHUP to each of the {len(INSTANCES)} masters)")
    if r["kill_list"]:
        log("   SIGKILLs (UTC): " + ", ".join(f"{k['instance']} {k['pid']} at {k['utc']}" for k in r["kill_list"]))
    for name in sorted(r["faults"]):
        outs = ", ".join(f"{o}: {n}" for o, n in sorted(r["faults"][name].items()))
        log(f"   {name:52} {outs}")
    ng = r["nginx_errors"]
    log(f"nginx error log: {sum(ng['expected'].values())} expected, {sum(ng['unexpected'].values())} unexpected, "
        f"{sum(ng['warn'].values())} warnings")
    for b in ("unexpected", "expected", "warn"):
        for cls, n in sorted(ng[b].items(), key=lambda x: -x[1]):
            log(f"   {b:10} {n:5}  {cls}")
    for line in ng["unexpected_lines"][:10]:
        log(f"   | {line[:300]}")
    for n, p in r["postern"].items():
        log(f"postern {n}: {p['deaths_killed']} workers killed by the soak (replaced, or draining already), "
            f"{p.get('deaths_never_served', 0)} still importing killed by a reload (never served), "
            f"{len(p['deaths_unexpected'])} other deaths, {len(p['panics'])} panics, {p['reloads_done']} reloads done")
        for line in p["deaths_unexpected"][:5] + p["panics"][:5]:
            log(f"   | {line[:300]}")
        for lvl in ("errors", "warnings"):
            for cls, c in sorted(p[lvl].items(), key=lambda x: -x[1])[:15]:
                log(f"   {lvl[:-1]:8} {c:5}  {cls}")
    log("memory and descriptors (after the warm-up at the start / at the end):")
    m = r["memory"]
    for when in ("start", "end"):
        for n, v in (m[when] or {}).items():
            ws = "; ".join(f"pid {w['pid']} {w['rss_kib'] / 1024:.1f} MiB {w['fds']}+{w['conns']} fds" for w in v["workers"])
            log(f"   {when:5} {n:5} master {v['master']['rss_kib'] / 1024:.1f} MiB {v['master']['fds']} fds; "
                f"workers: {ws}")
    for c in r["memory"]["checks"]:
        log(f"   {'ok  ' if c['ok'] else 'FAIL'} {c['what']:44} {c['start']:8.1f} -> {c['end']:8.1f} {c['unit']:3} (limit {c['limit']})")
    g = r["memory"]["worker_growth"]
    for n in INSTANCES:
        if n in g:
            log(f"   RSS growth within a worker's life ({n}, {g[n]['workers']} workers): median {g[n]['median_mib']} MiB, max {g[n]['max_mib']} MiB")
    log(f"verdict: {r['verdict']}")
    for b in r["bugs"]:
        log(f"   BUG: {b}")


if __name__ == "__main__":
    sys.exit(main())
