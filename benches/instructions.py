#!/usr/bin/env python3
"""What one request costs, exactly: user-space instructions (callgrind) and system calls
(strace) per request, postern against uWSGI, straight to the socket (no nginx).

Not a test: a script you run by hand (Python 3 stdlib; needs valgrind and strace).

    python3 benches/instructions.py                              # 4 scenarios x 2 servers, ~1 min
    python3 benches/instructions.py --scenarios hello --servers postern    # one figure, ~5 s
    python3 benches/instructions.py --scenarios all --top 20 --format markdown
    python3 benches/instructions.py --postern-bin /tmp/before/postern --scenarios fcgi-keep

Use it to prove an optimisation: run it before and after, quote the two
"instructions/request" (and "syscalls/request") figures in the commit message.

How it counts:

- Both servers run as ONE process with ONE Python thread: postern `--workers 1
  --threads 1` (no master), uWSGI `--processes 1 --threads 1` without `--master`; access
  logs off (`--access-log off --log-level warn`, `--disable-logging`; `--log-level` sets
  postern's: `info` to count the request span); the same app from
  benches/apps/ over a unix socket.
- The client is this script: serial, one request at a time, the request nginx would send
  for `wrk` (the uwsgi_params / fastcgi_params variables, Host only), a new connection per
  request except in fcgi-keep (one connection for every request, FCGI_KEEP_CONN set; a
  server that closes it anyway, as uWSGI does, gets a new connection, counted as
  "reconnects").
- Instructions: `valgrind --tool=callgrind` over the whole process (every thread).
  Start-up is excluded with callgrind_control: it runs uninstrumented
  (`--instr-atstart=no`, so it is fast), after W warm-up requests instrumentation is
  switched on (`callgrind_control -i on`), 5 more requests, the counters are zeroed
  (`-z`), N requests are served, the counters are dumped (`-d`); instructions/request =
  the dump's total Ir / N, split by object file (CPython, the server's own binary, libc)
  from the dump's self costs. Idle threads add about 200 instructions a second, nothing per
  request. Run to run, postern's figure moves by ~1-2% (its other threads react to
  timing: a wake-up more or less), uWSGI's by a few instructions: repeat a run before
  trusting a difference under ~1,000. The top functions are `callgrind_annotate` of that
  dump (self cost, per request).
- System calls: a native run (no valgrind), `strace -c -f -p PID` attached after the
  warm-up (every thread), detached after N requests: calls per request, by syscall.

Scenarios (default: hello, fcgi, fcgi-keep, stream; `all` adds upload and big):
  hello      uwsgi protocol, benches/apps/hello.py (14-byte body)
  fcgi       FastCGI, a connection per request (nginx fastcgi_pass without keep-conn)
  fcgi-keep  FastCGI, one kept connection (fastcgi_keep_conn on + upstream keepalive)
  stream     uwsgi, benches/apps/stream.py: 100 chunks of 1 KiB from a generator
  upload     uwsgi, benches/apps/upload.py: POST 64 KiB, echoed back
  big        uwsgi, benches/apps/big.py: a 1 MiB response
  asgi-hello, asgi-fcgi-keep, asgi-stream: postern only, `--interface asgi --loop asyncio`
             (--asgi-loop uvloop for uvloop), the same responses from benches/apps/*_asgi.py:
             next to hello, fcgi-keep and stream, what the ASGI path costs over the WSGI one
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import APPS, REPO, build_postern, ensure_venv, log  # noqa: E402


def die(msg: str):
    raise SystemExit(f"instructions: {msg}")


# --------------------------------------------------------------------------- requests

# What nginx sends for wrk's `GET / HTTP/1.1` + `Host:` with the stock params files.
UWSGI_VARS = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""), ("CONTENT_LENGTH", ""),
    ("REQUEST_URI", "/"), ("PATH_INFO", "/"), ("DOCUMENT_ROOT", "/etc/nginx/html"),
    ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"), ("REMOTE_ADDR", "127.0.0.1"),
    ("REMOTE_PORT", "51234"), ("SERVER_PORT", "8080"), ("SERVER_NAME", ""),
    ("HTTP_HOST", "127.0.0.1"),
]
FASTCGI_VARS = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""), ("CONTENT_LENGTH", ""),
    ("SCRIPT_NAME", "/"), ("REQUEST_URI", "/"), ("DOCUMENT_URI", "/"),
    ("DOCUMENT_ROOT", "/etc/nginx/html"), ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "http"), ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx/1.22.1"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "51234"),
    ("REMOTE_USER", ""), ("SERVER_ADDR", "127.0.0.1"), ("SERVER_PORT", "8080"),
    ("SERVER_NAME", ""), ("REDIRECT_STATUS", "200"), ("HTTP_HOST", "127.0.0.1"),
]


def with_body(pairs, body: bytes):
    if not body:
        return pairs
    out = []
    for k, v in pairs:
        if k == "REQUEST_METHOD":
            v = "POST"
        elif k == "CONTENT_TYPE":
            v = "application/octet-stream"
        elif k == "CONTENT_LENGTH":
            v = str(len(body))
        out.append((k, v))
    return out


def uwsgi_packet(body: bytes = b"") -> bytes:
    block = b""
    for k, v in with_body(UWSGI_VARS, body):
        for s in (k.encode(), v.encode()):
            block += len(s).to_bytes(2, "little") + s
    return b"\x00" + len(block).to_bytes(2, "little") + b"\x00" + block + body


def fcgi_len(n: int) -> bytes:
    return bytes([n]) if n < 128 else (n | 0x80000000).to_bytes(4, "big")


def fcgi_record(rtype: int, content: bytes, rid: int = 1) -> bytes:
    pad = -len(content) % 8
    return (bytes([1, rtype]) + rid.to_bytes(2, "big") + len(content).to_bytes(2, "big")
            + bytes([pad, 0]) + content + b"\0" * pad)


def fcgi_request(keep: bool, body: bytes = b"") -> bytes:
    params = b"".join(fcgi_len(len(k)) + fcgi_len(len(v)) + k.encode() + v.encode()
                      for k, v in with_body(FASTCGI_VARS, body))
    out = fcgi_record(1, (1).to_bytes(2, "big") + bytes([1 if keep else 0]) + b"\0" * 5)
    out += fcgi_record(4, params) + fcgi_record(4, b"")
    for i in range(0, len(body), 32768):
        out += fcgi_record(5, body[i:i + 32768])
    return out + fcgi_record(5, b"")


class Client:
    """Serial requests to a unix socket, the way nginx sends them."""

    def __init__(self, path: Path, proto: str, body: bytes = b""):
        self.path, self.proto = str(path), proto
        self.conn: socket.socket | None = None
        self.reconnects = 0
        self.buf = b""
        if proto == "uwsgi":
            self.req = uwsgi_packet(body)
        else:
            self.req = fcgi_request(proto == "fcgi-keep", body)

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect(self.path)
        return s

    def one(self) -> bytes:
        if self.proto == "uwsgi":
            with self.connect() as s:
                s.sendall(self.req)
                out = []
                while True:
                    d = s.recv(1 << 20)
                    if not d:
                        break
                    out.append(d)
            resp = b"".join(out)
            if not resp.startswith(b"HTTP/1.1 200") and not resp.startswith(b"HTTP/1.0 200"):
                die(f"unexpected answer: {resp[:200]!r}")
            return resp
        keep = self.proto == "fcgi-keep"
        for attempt in range(2):
            if self.conn is None:
                self.conn, self.buf = self.connect(), b""
            try:
                self.conn.sendall(self.req)
                resp = self.read_fcgi()
                if not keep:
                    self.conn.close()
                    self.conn = None
                return resp
            except (ConnectionError, EOFError):
                # The server closed a connection we meant to reuse (uWSGI ignores
                # FCGI_KEEP_CONN): nginx would retry on a new one; so do we.
                self.conn.close()
                self.conn = None
                if not keep or attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def read_fcgi(self) -> bytes:
        stdout = []
        while True:
            while len(self.buf) < 8:
                d = self.conn.recv(1 << 20)
                if not d:
                    raise EOFError("connection closed")
                self.buf += d
            rtype, clen, plen = self.buf[1], int.from_bytes(self.buf[4:6], "big"), self.buf[6]
            while len(self.buf) < 8 + clen + plen:
                d = self.conn.recv(1 << 20)
                if not d:
                    raise EOFError("connection closed mid-record")
                self.buf += d
            content, self.buf = self.buf[8:8 + clen], self.buf[8 + clen + plen:]
            if rtype == 6:
                stdout.append(content)
            elif rtype == 3:
                resp = b"".join(stdout)
                if not resp.startswith(b"Status: 200") and b"200" not in resp[:64]:
                    die(f"unexpected FastCGI answer: {resp[:200]!r}")
                if self.proto == "fcgi-keep" and self.buf == b"":
                    # uWSGI closes after END_REQUEST: notice it now, not on the next send.
                    pass
                return resp

    def run(self, n: int) -> None:
        for _ in range(n):
            self.one()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    proto: str       # uwsgi | fcgi | fcgi-keep
    app: str
    requests: int    # default N (callgrind and strace)
    body: int = 0
    text: str = ""
    asgi: bool = False  # postern --interface asgi (uWSGI has no ASGI: postern only)


SCENARIOS = {
    "hello": Scenario("hello", "uwsgi", "hello.py", 500, text="uwsgi, hello"),
    "fcgi": Scenario("fcgi", "fcgi", "hello.py", 500, text="FastCGI, a connection per request, hello"),
    "fcgi-keep": Scenario("fcgi-keep", "fcgi-keep", "hello.py", 500,
                          text="FastCGI keep-conn, one connection, hello"),
    "stream": Scenario("stream", "uwsgi", "stream.py", 200, text="uwsgi, 100 x 1 KiB chunks"),
    "upload": Scenario("upload", "uwsgi", "upload.py", 100, body=64 << 10, text="uwsgi, POST 64 KiB echoed"),
    "big": Scenario("big", "uwsgi", "big.py", 50, text="uwsgi, 1 MiB response"),
    # ASGI (postern only): the same responses from benches/apps/*_asgi.py.
    "asgi-hello": Scenario("asgi-hello", "uwsgi", "hello_asgi.py", 500, text="uwsgi, ASGI hello",
                           asgi=True),
    "asgi-fcgi-keep": Scenario("asgi-fcgi-keep", "fcgi-keep", "hello_asgi.py", 500,
                               text="FastCGI keep-conn, ASGI hello", asgi=True),
    "asgi-stream": Scenario("asgi-stream", "uwsgi", "stream_asgi.py", 200,
                            text="uwsgi, ASGI 100 x 1 KiB chunks", asgi=True),
}
DEFAULT = ["hello", "fcgi", "fcgi-keep", "stream"]


def server_cmd(server: str, scen: Scenario, sock: Path, bins: dict) -> list[str]:
    app = APPS / scen.app
    if server == "postern":
        flag = "--uwsgi" if scen.proto == "uwsgi" else "--fastcgi"
        asgi = ["--interface", "asgi", "--loop", bins.get("asgi_loop", "asyncio"),
                "--venv", str(bins["venv"])] if scen.asgi else []
        return [str(bins["postern"]), flag, f"unix:{sock}", "--workers", "1", "--threads", "1",
                "--access-log", "off", "--log-level", bins.get("log_level", "warn"), *asgi,
                f"{app}:application"]
    return [str(bins["uwsgi"]), "--socket" if scen.proto == "uwsgi" else "--fastcgi-socket", str(sock),
            "--processes", "1", "--threads", "1", "--disable-logging", "--need-app", "--strict",
            "--wsgi-file", str(app), "--callable", "application"]


@dataclass
class Figures:
    server: str
    scenario: str
    requests: int = 0
    ir: float = float("nan")
    top: list = field(default_factory=list)     # (Ir per request, share, function)
    syscalls: float = float("nan")
    by_syscall: list = field(default_factory=list)  # (calls per request, name)
    reconnects: int = 0
    by_object: dict = field(default_factory=dict)  # CPython / postern / uwsgi / libc / other: Ir per request


def env_for() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    env["PYTHONHASHSEED"] = "0"  # repeatable dict layouts, so repeatable counts
    return env


def start(cmd: list[str], run_dir: Path, sock: Path, timeout: float) -> subprocess.Popen:
    out = open(run_dir / "server.log", "ab")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=run_dir,
                         env=env_for(), start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            die(f"{shlex_join(cmd)} exited ({p.returncode}):\n{(run_dir / 'server.log').read_text(errors='replace')[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(sock))
            return p
        except OSError:
            time.sleep(0.05)
    stop(p)
    die(f"{cmd[0]} did not listen on {sock} within {timeout:.0f} s")


def shlex_join(cmd):
    import shlex
    return shlex.join(cmd)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        # SIGINT: both postern and a master-less uWSGI exit on it (uWSGI 2.0 reloads on SIGTERM).
        os.kill(p.pid, signal.SIGINT)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p.wait()


def callgrind_control(flag: str, pid: int, value: str | None = None) -> None:
    cmd = ["callgrind_control", flag] + ([value] if value else []) + [str(pid)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "OK" not in r.stdout:
        die(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}")


TOP_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$")


def callgrind(server: str, scen: Scenario, bins: dict, work: Path, n: int, warm: int, top: int,
              inclusive: bool, keep: Path | None = None) -> Figures:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"cg-{server}-{scen.name}-"))
    sock = run_dir / "app.sock"
    # Start-up runs uninstrumented (several times faster under valgrind); instrumentation
    # is switched on after the warm-up, a few more requests warm the translations, then
    # the counters are zeroed.
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
           f"--callgrind-out-file={run_dir}/callgrind.out.%p", *server_cmd(server, scen, sock, bins)]
    p = start(cmd, run_dir, sock, 180)
    client = Client(sock, scen.proto, upload_body(scen.body))
    try:
        client.run(warm)
        callgrind_control("-i", p.pid, "on")
        client.run(5)
        callgrind_control("-z", p.pid)
        client.run(n)
        client.close()
        callgrind_control("-d", p.pid)
    finally:
        client.close()
        stop(p)
    dumps = sorted(run_dir.glob(f"callgrind.out.{p.pid}.*"), key=lambda f: int(f.name.rsplit(".", 1)[1]))
    if not dumps:
        die(f"no callgrind dump in {run_dir}")
    dump = dumps[0]
    total = 0
    for line in dump.read_text(errors="replace").splitlines():
        m = re.match(r"^(?:summary|totals):\s+(\d+)", line)
        if m:
            total = int(m.group(1))
            break
    f = Figures(server, scen.name, n, total / n, reconnects=client.reconnects)
    entries = []  # (Ir, share, function, object)
    ann = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                          "--threshold=100", str(dump)], capture_output=True, text=True)
    for line in ann.stdout.splitlines():
        m = TOP_LINE.match(line)
        if m and "PROGRAM TOTALS" not in line:
            fn = m.group(3).strip()
            obj = re.search(r"\[([^\]]*)\]$", fn)
            fn = re.sub(r"\s*\[[^\]]*\]$", "", fn)
            fn = fn.split(":", 1)[1] if re.match(r"^[^ ]*:", fn) and not fn.startswith("0x") else fn
            entries.append((int(m.group(1).replace(",", "")), float(m.group(2)), fn,
                            obj.group(1) if obj else "?"))
    # Frames that were on a thread's stack when the counters were zeroed (main, a thread's
    # start, a worker's loop) are charged that thread's whole cost: a chain of entries
    # with the very same count. They are not hot spots and would count twice.
    same: dict[int, int] = {}
    for ir, *_ in entries:
        same[ir] = same.get(ir, 0) + 1
    chain = {ir for ir, k in same.items() if k >= 2 and ir >= 0.05 * total}
    real = [e for e in entries if e[0] not in chain and e[0] < 0.99 * total]
    for ir, share, fn, _ in real[:top]:
        f.top.append((ir / n, share, fn))
    for obj, ir in self_cost_by_object(dump).items():
        kind = object_kind(obj, server)
        f.by_object[kind] = f.by_object.get(kind, 0) + ir / n
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, keep / f"callgrind.out.{server}.{scen.name}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return f


def self_cost_by_object(dump: Path) -> dict[str, int]:
    """Self instructions per object file (libpython, the server's binary, libc, ...),
    read from the callgrind file itself: every cost line belongs to the current `ob=`,
    except the line after a `calls=` (that is the inclusive cost of the call)."""
    names: dict[str, str] = {}
    out: dict[str, int] = {}
    ob, after_call = "?", False
    with open(dump, errors="replace") as fh:
        for line in fh:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    out[ob] = out.get(ob, 0) + int(parts[-1])
            elif line.startswith("ob="):
                m = re.match(r"ob=\((\d+)\)\s*(.*)", line.strip())
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    ob = names.get(m.group(1), "?")
                else:
                    ob = line[3:].strip()
            elif line.startswith("cob="):
                # Names are defined once, wherever an id first appears (often in cob=).
                m = re.match(r"cob=\((\d+)\)\s*(.+)", line.strip())
                if m:
                    names[m.group(1)] = m.group(2)
            elif line.startswith("calls="):
                after_call = True
    return out


def object_kind(obj: str, server: str) -> str:
    name = os.path.basename(obj)
    if name.startswith("libpython"):
        return "CPython"
    if name in ("postern", "uwsgi"):
        return server
    if name.startswith("libc.so") or name.startswith("libm.so"):
        return "libc"
    if name.startswith("ld-linux") or "vgpreload" in name:
        return "ld.so/valgrind"
    if name.startswith("libpthread") or name.startswith("libdl"):
        return "libc"
    if name.endswith(".so") and "lib-dynload" in obj:
        return "CPython"  # extension modules of the standard library
    if name == "???":
        return "unknown"
    return "other"


def upload_body(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def strace(server: str, scen: Scenario, bins: dict, work: Path, n: int, warm: int, fig: Figures) -> None:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"st-{server}-{scen.name}-"))
    sock = run_dir / "app.sock"
    p = start(server_cmd(server, scen, sock, bins), run_dir, sock, 60)
    client = Client(sock, scen.proto, upload_body(scen.body))
    out = run_dir / "strace.txt"
    err = open(run_dir / "strace.err", "wb")
    st = None
    try:
        client.run(warm)
        st = subprocess.Popen(["strace", "-c", "-f", "-p", str(p.pid), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        # strace says "Process PID attached with N threads" once it holds them all.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "attached" in (run_dir / "strace.err").read_text(errors="replace"):
                break
            time.sleep(0.02)
        time.sleep(0.2)
        client.run(n)
        client.close()
        time.sleep(0.1)
    finally:
        client.close()
        if st is not None:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=30)
        err.close()
        stop(p)
    rows = []
    total = float("nan")
    for line in out.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            # % time, seconds, usecs/call, calls, [errors], syscall
            calls = int(parts[3])
            rows.append((calls / n, parts[-1]))
        elif parts and parts[-1] == "total" and len(parts) >= 4:
            total = int(parts[3]) / n
    rows.sort(reverse=True)
    fig.syscalls = total
    fig.by_syscall = rows
    shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(DEFAULT),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}, or all")
    ap.add_argument("--servers", default="postern,uwsgi", help="postern,uwsgi or one of them")
    ap.add_argument("--requests", type=int, help="N requests counted (default per scenario: "
                    + ", ".join(f"{s.name} {s.requests}" for s in SCENARIOS.values()) + ")")
    ap.add_argument("--warmup", type=int, default=20, help="W requests before counting")
    ap.add_argument("--top", type=int, default=12, help="functions shown per scenario and server")
    ap.add_argument("--inclusive", action="store_true", help="top functions by inclusive cost")
    ap.add_argument("--no-callgrind", action="store_true", help="syscalls only")
    ap.add_argument("--no-strace", action="store_true", help="instructions only")
    ap.add_argument("--log-level", default="warn",
                    help="postern's --log-level (the access log stays off)")
    ap.add_argument("--postern-bin", help="use this postern binary instead of cargo build --release")
    ap.add_argument("--uwsgi-bin", help="use this uwsgi (default: target/bench-venv/bin/uwsgi)")
    ap.add_argument("--venv", default=str(REPO / "target" / "bench-venv"))
    ap.add_argument("--asgi-loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="the asgi-* scenarios' postern --loop (uvloop is installed into the venv)")
    ap.add_argument("--format", choices=["text", "markdown"], default="text")
    ap.add_argument("--keep-dumps", metavar="DIR",
                    help="copy each callgrind dump to DIR/callgrind.out.SERVER.SCENARIO "
                         "(for callgrind_annotate --tree=caller, --auto=yes, ...)")
    args = ap.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIOS]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if bad or not names or not servers or set(servers) - {"postern", "uwsgi"}:
        ap.error(f"--scenarios from {','.join(SCENARIOS)}; --servers from postern,uwsgi")
    tools = ([] if args.no_callgrind else ["valgrind", "callgrind_control", "callgrind_annotate"]) + \
            ([] if args.no_strace else ["strace"])
    for t in tools:
        if not shutil.which(t):
            die(f"{t} not found (apt-get install valgrind strace)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    bins = {"venv": Path(args.venv).resolve(), "asgi_loop": args.asgi_loop,
            "log_level": args.log_level}
    if "postern" in servers:
        bins["postern"] = build_postern(args.postern_bin)
    if args.asgi_loop == "uvloop" and any(SCENARIOS[n].asgi for n in names):
        ensure_venv(bins["venv"], packages=["uvloop"])
    if "uwsgi" in servers:
        if args.uwsgi_bin:
            bins["uwsgi"] = Path(args.uwsgi_bin)
        else:
            venv = Path(args.venv).resolve()
            ensure_venv(venv, packages=["uwsgi"])
            bins["uwsgi"] = venv / "bin" / "uwsgi"
    work = Path(tempfile.mkdtemp(prefix="postern-instructions-"))
    results: list[Figures] = []
    t0 = time.monotonic()
    try:
        for name in names:
            scen = SCENARIOS[name]
            n = args.requests or scen.requests
            for server in servers:
                if scen.asgi and server != "postern":
                    continue
                t = time.monotonic()
                if args.no_callgrind:
                    fig = Figures(server, name, n)
                else:
                    fig = callgrind(server, scen, bins, work, n, args.warmup, args.top, args.inclusive,
                                   Path(args.keep_dumps) if args.keep_dumps else None)
                if not args.no_strace:
                    strace(server, scen, bins, work, n, args.warmup, fig)
                results.append(fig)
                sc = ", ".join(f"{name_} {c:.2f}" for c, name_ in fig.by_syscall if c >= 0.01)
                log(f"== {name:<9} {server:<7} {fig.ir:>10,.0f} instructions/request  "
                    f"{fig.syscalls:>6.2f} syscalls/request ({sc})"
                    + (f"  [{fig.reconnects} reconnects]" if fig.reconnects else "")
                    + f"  ({time.monotonic() - t:.1f} s)")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)

    log("")
    if args.format == "markdown":
        log("| scenario | server | instructions / request | of which CPython / server / libc | syscalls / request | syscalls |")
        log("|---|---|---:|---|---:|---|")
        for f in results:
            sc = ", ".join(f"{n_} {c:.2f}".rstrip("0").rstrip(".") for c, n_ in f.by_syscall if c >= 0.01)
            ob = " / ".join(f"{f.by_object.get(k, 0):,.0f}" for k in ("CPython", f.server, "libc"))
            log(f"| {SCENARIOS[f.scenario].text} | {f.server} | {f.ir:,.0f} | {ob} | {f.syscalls:.2f} | {sc} |")
    else:
        log(f"{'scenario':<10} {'server':<8} {'instr/req':>10} {'syscalls/req':>12}  ratio postern/uWSGI")
        for f in results:
            other = next((o for o in results if o.scenario == f.scenario and o.server == "uwsgi"), None)
            rt = f"{f.ir / other.ir:.2f}" if other and f.server == "postern" and other.ir == other.ir else ""
            log(f"{f.scenario:<10} {f.server:<8} {f.ir:>10,.0f} {f.syscalls:>12.2f}  {rt}")
    for f in results:
        if f.by_object:
            parts = sorted(f.by_object.items(), key=lambda kv: -kv[1])
            log(f"-- {f.scenario} / {f.server}: by object (self instructions per request): "
                + ", ".join(f"{k} {v:,.0f} ({v / f.ir * 100:.0f}%)" for k, v in parts if v >= 0.005 * f.ir))
    for f in results:
        if f.top:
            log(f"\n-- {f.scenario} / {f.server}: top functions by {'inclusive' if args.inclusive else 'self'} "
                f"instructions per request")
            for ir, share, fn in f.top:
                log(f"   {ir:>9,.0f}  {share:5.1f}%  {fn[:150]}")
    log(f"\n({time.monotonic() - t0:.0f} s; instructions: callgrind counters zeroed after {args.warmup} "
        f"warm-up requests and dumped after N; syscalls: strace -c -f attached after the warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
