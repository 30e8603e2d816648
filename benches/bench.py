#!/usr/bin/env python3
"""postern against its peers, each behind its own nginx: the one benchmark entry point.

Not a test: a script you run by hand (Python 3 stdlib only; needs nginx and wrk).

    python3 benches/bench.py                       # quick: ~2 min (hello, upload, stream at 2x1)
    python3 benches/bench.py --preset full --format markdown    # the README run, ~15 min
    python3 benches/bench.py --scenarios hello --shapes 1x1,2x4 --servers postern,uwsgi
    python3 benches/bench.py --servers postern,uwsgi --protocols fcgi-keep,uwsgi --rounds 5
    python3 benches/bench.py --list                # the variants, scenarios and presets
    python3 benches/bench.py --scenarios hello --servers postern,uwsgi \
        --postern-variant='waits=--sched-batch=waits'   # two postern settings, same rounds
    python3 benches/bench.py --scenarios sleep --shapes 1x4 --connections 4 --hogs 2 \
        --servers postern --protocols uwsgi      # every CPU busy: the app's own waits

What it does:

1. `cargo build --release` (skip with --postern-bin PATH).
2. A scratch venv, target/bench-venv, made with the `python3` on PATH (the CPython that
   postern embeds, so every server runs the same interpreter), with uWSGI, gunicorn,
   granian, flup and Flask from PyPI (installed once, reused; shared with other scripts).
3. For each group (a scenario and a workers x threads shape), in a temp dir: every
   selected variant (a server and a protocol, see --list) serving the same app from
   benches/apps/ with the same workers and threads, each on its own unix socket behind
   its own nginx (1 worker, access_log off, identical buffer settings), plus, for
   hello, an nginx that answers `return 200` itself (the ceiling: no backend at all).
4. Checks that every variant answers 200 with the same body through its nginx,
   measures idle PSS, warms each up, then runs interleaved rounds of `wrk --latency`
   (the order reverses every round), all variants of a group in every round.
5. Per variant and round: req/s, p50/p99, errors (wrk socket errors + non-2xx + nginx
   error-log lines about the upstream), server CPU per request (user+sys of the whole
   server process tree from /proc/PID/stat over the run / requests; its kernel share;
   and by thread), wake-ups per request (voluntary context switches of every server
   thread, /proc/PID/task/*/status), nginx CPU per request (its master + worker), PSS of
   the server's process tree (sum of
   /proc/PID/smaps_rollup: idle before the warm-up, and the peak sampled during the
   runs). Reported: medians over rounds, and the ratios to uWSGI over the uwsgi protocol
   computed per round (each round runs both back to back, so they share the machine's
   noise), then their median; and issue 9's targets that these ratios check (met / not
   met). --syscalls adds one run per server under strace -c -f.

The machine this was written on has 2 cores shared with other work: absolute numbers
move from run to run; the ratios within one interleaved run are what count.

Everything it starts is stopped on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHES = REPO / "benches"
APPS = BENCHES / "apps"
NGINX = "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VENV_PACKAGES = {  # pip name -> module to import
    "uwsgi": None, "gunicorn": "gunicorn", "granian": "granian", "flup": "flup.server.fcgi",
    "flask": "flask",
}
# Installed only when asked for (--asgi-loop uvloop): with uvloop importable, every ASGI
# server's "auto" loop would pick it, so the default run has none.
OPTIONAL_PACKAGES = {"uvloop": "uvloop"}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def die(msg: str):
    raise SystemExit(f"bench: {msg}")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def first_line(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    return ((r.stdout or r.stderr).strip().split("\n") or [""])[0]


# --------------------------------------------------------------------------- processes


class Procs:
    """Every long-running child, each in its own session (so a Ctrl-C in the terminal
    reaches only this script, which then stops them in order)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, cmd: list[str], *, stop_signal: int, log_path: Path,
              cwd: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 cwd=cwd, env=env, start_new_session=True)
        self.items.append((name, p, stop_signal))
        return p

    def stop_all(self) -> None:
        # Reverse order: the nginxes first, then the backends.
        for _, p, sig in reversed(self.items):
            if p.poll() is None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for name, p, _ in reversed(self.items):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"  {name} (pid {p.pid}) did not stop in time; SIGKILL to its group")
            # Whatever is left in the child's own group (workers of a master).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.items.clear()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (a master and its workers, nginx and its worker)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _stat_fields(pid: int):
    """The fields of /proc/PID/stat after the command name (fields[11] is utime), or None
    when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of the given processes (all their threads, and the children they
    have reaped), in seconds."""
    total = 0
    for fields in filter(None, map(_stat_fields, pids)):
        # utime, stime, cutime, cstime: a worker that exits mid-run (recycling) is
        # still counted through its parent's cutime/cstime.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def sys_seconds(pids: list[int]) -> float:
    """The system (kernel) part of cpu_seconds."""
    total = 0
    for fields in filter(None, map(_stat_fields, pids)):
        total += int(fields[12]) + int(fields[14])  # stime, cstime
    return total / CLK_TCK


def thread_stats(pids: list[int]) -> dict:
    """Per thread of the given processes: (label, utime+stime ticks, voluntary context
    switches, involuntary ones). A voluntary switch is the thread going to sleep (to be
    woken again), so their sum per request counts the wake-ups; an involuntary one is the
    thread preempted (its time slice used up, or a woken thread given the core). The label
    is the thread's name, prefixed with "master:" for the root of a tree that has
    children."""
    out = {}
    root = pids[0] if len(pids) > 1 else None
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    st = f.read()
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    sw = {k: int(v) for k, _, v in (l.partition(":") for l in f)
                          if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
            except (OSError, ValueError):
                continue
            comm = st[st.index(b"(") + 1:st.rindex(b")")].decode(errors="replace")
            fields = st[st.rindex(b")") + 2:].split()
            label = ("master:" if pid == root else "") + re.sub(r"\d+$", "N", comm)
            out[(pid, int(tid))] = (label, int(fields[11]) + int(fields[12]),
                                    sw.get("voluntary_ctxt_switches", 0),
                                    sw.get("nonvoluntary_ctxt_switches", 0))
    return out


def thread_delta(before: dict, after: dict, n: int) -> tuple[dict, float, float]:
    """By thread label: (CPU µs, wake-ups, involuntary switches) per request; all wake-ups
    (voluntary switches) per request; all involuntary switches per request."""
    by: dict[str, list] = {}
    wakes = preempts = 0
    for k, (label, ticks, vol, invol) in after.items():
        b = before.get(k)
        t0, v0, i0 = (b[1], b[2], b[3]) if b else (0, 0, 0)
        e = by.setdefault(label, [0.0, 0.0, 0.0])
        e[0] += (ticks - t0) / CLK_TCK * 1e6 / n
        e[1] += (vol - v0) / n
        e[2] += (invol - i0) / n
        wakes += vol - v0
        preempts += invol - i0
    return ({k: tuple(v) for k, v in by.items() if v[0] > 0 or v[1] >= 0.01 or v[2] >= 0.01},
            wakes / n, preempts / n)


def pss_mib(pids: list[int]) -> float:
    """Sum of the PSS of the given processes (shared pages split between their users),
    in MiB."""
    kib = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        kib += int(line.split()[1])
                        break
        except OSError:
            continue
    return kib / 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- setup


def build_postern(postern_bin: str | None) -> Path:
    if postern_bin:
        p = Path(postern_bin).resolve()
        if not os.access(p, os.X_OK):
            die(f"--postern-bin {p} is not an executable file")
        return p
    log("== cargo build --release --bin postern")
    # Own process group, so an interrupt stops cargo *and* its rustc children.
    cargo = subprocess.Popen(["cargo", "build", "--release", "--bin", "postern"], cwd=REPO,
                             start_new_session=True)
    try:
        if cargo.wait() != 0:
            die(f"cargo build --release failed ({cargo.returncode})")
    finally:
        if cargo.poll() is None:
            try:
                os.killpg(cargo.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            cargo.wait()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "postern"


def python_identity(python: str) -> str:
    r = run([python, "-c", "import sys; print(sys.version.split()[0], sys.base_prefix)"],
            capture_output=True, text=True)
    return r.stdout.strip()


def ensure_venv(venv: Path, python: str = "python3", packages=None) -> Path:
    """target/bench-venv made with `python` (the CPython postern embeds), holding the
    given pip packages (default: all peers and Flask); only missing ones are installed,
    so a venv another script made is reused. Returns the venv's python."""
    packages = list(VENV_PACKAGES) if packages is None else packages
    base = shutil.which(python) or die(f"{python} not found on PATH")
    ident = python_identity(base)
    vpy = venv / "bin" / "python"
    if vpy.exists():
        have = python_identity(str(vpy))
        if have.split()[0] != ident.split()[0]:
            die(f"{venv} was made with Python {have}, but {python} is {ident}: remove it")
    else:
        log(f"== creating {venv} with {base} (Python {ident})")
        run([base, "-m", "venv", str(venv)])
    missing = []
    for pkg in packages:
        mod = {**VENV_PACKAGES, **OPTIONAL_PACKAGES}.get(pkg, pkg)
        if mod is None:
            ok = (venv / "bin" / pkg).exists()
        else:
            ok = subprocess.run([str(vpy), "-c", f"import {mod}"], capture_output=True).returncode == 0
        if not ok:
            missing.append(pkg)
    if missing:
        log(f"== pip install {' '.join(missing)} into {venv}")
        run([str(vpy), "-m", "pip", "install", "--disable-pip-version-check", "-q", *missing])
    (venv / ".bench-python").write_text(ident + "\n")
    return vpy


def pip_version(vpy: Path, dist: str) -> str:
    r = subprocess.run([str(vpy), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def gunicorn_has_uwsgi(vpy: Path) -> bool:
    r = subprocess.run([str(vpy), "-m", "gunicorn", "--help"], capture_output=True, text=True)
    return "--protocol" in r.stdout and "uwsgi" in r.stdout


def gunicorn_has_asgi(vpy: Path) -> bool:
    """Whether the installed gunicorn has its own ASGI worker (`-k asgi`)."""
    r = subprocess.run([str(vpy), "-c", "from gunicorn.workers import SUPPORTED_WORKERS as w; "
                        "print('asgi' in w)"], capture_output=True, text=True)
    return r.stdout.strip() == "True"


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    app: str             # file in benches/apps/
    method: str = "GET"
    body: int = 0        # request body bytes (POST)
    size: int | None = None  # expected response body length (None: compare bodies)
    text: str = ""
    asgi_app: str | None = None  # the same behaviour as an ASGI app (the *-asgi variants)
    read_timeout: int | None = None  # nginx's {uwsgi,fastcgi,proxy}_read_timeout (s); wrk waits 4x


SCENARIOS = {
    "hello": Scenario("hello", "hello.py", size=14, text="GET, 14-byte response",
                      asgi_app="hello_asgi.py"),
    "big": Scenario("big", "big.py", size=1 << 20, text="GET, 1 MiB response (Content-Length)",
                    asgi_app="big_asgi.py"),
    "upload": Scenario("upload", "upload.py", method="POST", body=64 << 10, size=64 << 10,
                       text="POST 64 KiB, echoed back", asgi_app="upload_asgi.py"),
    "stream": Scenario("stream", "stream.py", size=100 * 1024,
                       text="GET, 100 x 1 KiB chunks from a generator", asgi_app="stream_asgi.py"),
    "flask": Scenario("flask", "flask_json.py", text="GET, Flask jsonify (10 items)"),
    "sleep": Scenario("sleep", "sleep.py", size=14,
                      text="GET, the app waits 1 ms (time.sleep, GIL released), 14-byte response"),
    "overload": Scenario("overload", "slow.py", size=14, read_timeout=15,
                         text="GET, the app waits 100 ms; nginx's read timeout 15 s: run with "
                              "--connections 150 --duration 30 (more waiting than 2x1 serves "
                              "in 7.5 s) to see who gets a 504"),
}

SHAPES = ("1x1", "2x1", "2x4", "1x4")

# Variants: a server and a protocol. The key is what --servers/--protocols select on.
VARIANTS = {
    "nginx/return": ("nginx", "return", "nginx `return 200` (no backend: the ceiling)"),
    "postern/uwsgi": ("postern", "uwsgi", "postern, uwsgi_pass"),
    "postern/fcgi": ("postern", "fcgi", "postern, fastcgi_pass (a connection per request)"),
    "postern/fcgi-keep": ("postern", "fcgi-keep", "postern, fastcgi_pass + fastcgi_keep_conn on, upstream keepalive 32"),
    "uwsgi/uwsgi": ("uwsgi", "uwsgi", "uWSGI --socket, uwsgi_pass (the reference of every ratio)"),
    "uwsgi/fcgi": ("uwsgi", "fcgi", "uWSGI --fastcgi-socket, fastcgi_pass (uWSGI ignores keep-conn, so no keep variant)"),
    "gunicorn/uwsgi": ("gunicorn", "uwsgi", "gunicorn --protocol uwsgi, uwsgi_pass (if the installed gunicorn has it)"),
    "gunicorn/http": ("gunicorn", "http", "gunicorn over HTTP, proxy_pass (used when it has no uwsgi protocol)"),
    "granian/http": ("granian", "http", "granian --interface wsgi over HTTP, proxy_pass + upstream keepalive 32"),
    "flup/fcgi": ("flup", "fcgi", "flup over FastCGI, fastcgi_pass (1x1: fcgi_single; Wx1: fcgi_fork; 1xT: threaded; WxT: not run)"),
    # ASGI: the scenario's asgi_app (benches/apps/*_asgi.py), same responses as the WSGI app.
    "postern-asgi/uwsgi": ("postern-asgi", "uwsgi", "postern --interface asgi, uwsgi_pass"),
    "postern-asgi/fcgi-keep": ("postern-asgi", "fcgi-keep", "postern --interface asgi, fastcgi_pass + keep_conn, upstream keepalive 32"),
    "gunicorn-asgi/uwsgi": ("gunicorn-asgi", "uwsgi", "gunicorn -k asgi --protocol uwsgi, uwsgi_pass (if the installed gunicorn has both)"),
    "gunicorn-asgi/http": ("gunicorn-asgi", "http", "gunicorn -k asgi over HTTP, proxy_pass (used when it has no uwsgi protocol)"),
    "granian-asgi/http": ("granian-asgi", "http", "granian --interface asgi over HTTP, proxy_pass + upstream keepalive 32"),
}
SERVERS = ("nginx", "postern", "uwsgi", "gunicorn", "granian", "flup", "postern-asgi", "gunicorn-asgi",
           "granian-asgi")
PROTOCOLS = ("return", "uwsgi", "fcgi", "fcgi-keep", "http")
LABELS = {"nginx": "nginx", "postern": "postern", "uwsgi": "uWSGI", "gunicorn": "gunicorn",
          "granian": "granian", "flup": "flup", "postern-asgi": "postern ASGI",
          "gunicorn-asgi": "gunicorn ASGI", "granian-asgi": "granian ASGI"}
# The variant every ratio is to (per round): uWSGI over uwsgi, or what a preset / --reference
# names (the asgi preset: postern's own WSGI path).
REFERENCE = "uwsgi/uwsgi"

ALL_BACKENDS = ["postern/uwsgi", "postern/fcgi", "postern/fcgi-keep", "uwsgi/uwsgi", "uwsgi/fcgi",
                "gunicorn/uwsgi", "granian/http", "flup/fcgi"]
CORE = ["postern/uwsgi", "postern/fcgi", "postern/fcgi-keep", "uwsgi/uwsgi"]
ASGI = ["postern/uwsgi", "postern-asgi/uwsgi", "gunicorn-asgi/uwsgi", "granian-asgi/http"]
# Run without a preset only when --servers names an ASGI server (the default matrix is WSGI).
ASGI_BACKENDS = ["postern-asgi/uwsgi", "postern-asgi/fcgi-keep", "gunicorn-asgi/uwsgi", "granian-asgi/http"]

# Presets: lists of (scenario, shape, variants). Flags narrow them (--scenarios,
# --shapes, --servers, --protocols); without --preset the groups are the cross product
# of --scenarios x --shapes with every selected variant.
PRESETS = {
    # ~2 min: the targets' main cases, postern against uWSGI.
    "quick": dict(rounds=2, duration=3, warmup=1, groups=[
        ("hello", "2x1", ["nginx/return"] + CORE),
        ("upload", "2x1", CORE),
        ("stream", "2x1", CORE),
    ]),
    # ~15 min: what the README's Performance section shows.
    # More, shorter rounds: on a shared machine the median of per-round ratios is what
    # holds still. flup (far behind everywhere) only where it tells something.
    "full": dict(rounds=4, duration=3, warmup=1, groups=[
        ("hello", "2x1", ["nginx/return"] + ALL_BACKENDS),
        ("big", "2x1", ALL_BACKENDS[:-1]),
        ("upload", "2x1", ALL_BACKENDS[:-1]),
        ("stream", "2x1", ALL_BACKENDS[:-1]),
        ("flask", "2x1", ALL_BACKENDS),
        ("hello", "1x1", ALL_BACKENDS),
        ("hello", "2x4", ["postern/uwsgi", "postern/fcgi-keep", "uwsgi/uwsgi", "gunicorn/uwsgi",
                          "granian/http"]),
    ]),
    # ~5 min: issue 11's performance targets. Ratios to postern's own WSGI path (same app
    # behaviour, same workers); the serial run counts context switches per request.
    "asgi": dict(rounds=6, duration=3, warmup=1, serial=3, reference="postern/uwsgi", groups=[
        ("hello", "2x1", ["nginx/return"] + ASGI + ["granian/http"]),
        ("hello", "1x1", ASGI + ["postern-asgi/fcgi-keep"]),
    ]),
    # ~8 min more: the other bodies on the ASGI path (informative; no target).
    "asgi-bodies": dict(rounds=4, duration=3, warmup=1, serial=0, reference="postern/uwsgi", groups=[
        ("upload", "2x1", ASGI),
        ("stream", "2x1", ASGI),
        ("big", "2x1", ASGI),
    ]),
}


# --------------------------------------------------------------------------- servers


FLUP_LAUNCHER = r'''# generated by benches/bench.py: serve one WSGI app with flup over FastCGI.
# usage: python flup_launcher.py FILE.py CALLABLE SOCKET WORKERS THREADS
import os, runpy, sys
path, name, sock, workers, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, os.path.dirname(path))
inner = runpy.run_path(path, run_name="__flup_app__")[name]


def app(environ, start_response):
    # nginx's fastcgi_params send SCRIPT_NAME=$fastcgi_script_name ("/") and no PATH_INFO;
    # postern and uWSGI treat that as PATH_INFO "/", flup passes it on as is (and Flask
    # then redirects "" to "/"). Do what the others do.
    if not environ.get("PATH_INFO") and environ.get("SCRIPT_NAME"):
        environ["PATH_INFO"], environ["SCRIPT_NAME"] = environ["SCRIPT_NAME"], ""
    return inner(environ, start_response)


if workers == 1 and threads == 1:
    from flup.server.fcgi_single import WSGIServer     # one thread, one connection at a time
    server = WSGIServer(app, bindAddress=sock, umask=0o111)
elif workers == 1:
    from flup.server.fcgi import WSGIServer            # a thread per connection, up to THREADS
    server = WSGIServer(app, bindAddress=sock, umask=0o111, multithreaded=True,
                        maxThreads=threads, minSpare=1, maxSpare=threads)
else:
    from flup.server.fcgi_fork import WSGIServer       # prefork: WORKERS processes, 1 thread each
    server = WSGIServer(app, bindAddress=sock, umask=0o111, minSpare=workers,
                        maxSpare=workers, maxChildren=workers, maxRequests=0)
server.run()
'''


@dataclass
class Backend:
    key: str                # e.g. postern/fcgi-keep
    server: str
    proto: str
    cmd: list[str]
    sock: Path | None
    log_path: Path
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None
    port: int = 0
    errlog: Path | None = None
    err_offset: int = 0
    shape_text: str = ""
    pss_idle: float = 0.0
    pss_peak: float = 0.0

    @property
    def label(self) -> str:
        return f"{LABELS[self.server]} {self.proto}"


def supported(key: str, shape: str, scenario: str) -> str | None:
    """Why this variant does not run in this group (None: it runs)."""
    server, proto, _ = VARIANTS[key]
    w, t = (int(x) for x in shape.split("x"))
    if server == "nginx" and scenario != "hello":
        return "nginx `return 200` is only the hello ceiling"
    if server == "flup" and w > 1 and t > 1:
        return "flup has no processes x threads model"
    if server.partition(":")[0].endswith("-asgi") and not SCENARIOS[scenario].asgi_app:
        return "this scenario has no ASGI app"
    return None


def make_backend(key: str, scen: Scenario, shape: str, tmp: Path, bins: dict, args) -> Backend:
    server, proto, _ = VARIANTS[key]
    w, t = shape.split("x")
    name = key.replace("/", "-").replace(":", "-")
    sock = tmp / f"{name}.sock"
    base, _, vname = server.partition(":")
    asgi = base.endswith("-asgi")
    server = base.removesuffix("-asgi") + (f":{vname}" if vname else "")
    app_file = scen.asgi_app if asgi else scen.app
    app_path = APPS / app_file
    module = app_file.removesuffix(".py")
    venv = str(bins["venv"])
    logs = args.logs
    if server == "nginx":
        return Backend(key, server, proto, [], None, tmp / f"{name}.log", shape_text="-")
    variant = server.partition(":")[2]
    if server.partition(":")[0] == "postern":
        flag = "--uwsgi" if proto == "uwsgi" else "--fastcgi"
        cmd = [str(bins["postern"]), flag, f"unix:{sock}", "--socket-mode", "666",
               "--workers", w, "--threads", t, "--venv", venv]
        # The access log does not follow --log-level: --access-log off silences it.
        cmd += ["--log-level", "info"] if logs else ["--log-level", "warn", "--access-log", "off"]
        if asgi:
            # Only the options this binary has: auto-detection picks ASGI for an async def.
            if "--interface" in bins["postern_help"]:
                cmd += ["--interface", "asgi"]
            if "--loop" in bins["postern_help"]:
                cmd += ["--loop", args.asgi_loop]
        cmd += [a for s in args.postern_args for a in shlex.split(s)]
        extra = args.variants[variant] if variant else []
        # `bin=PATH` in a variant's arguments: that variant runs this postern binary
        # (two builds side by side in the same rounds).
        for a in extra:
            if a.startswith("bin="):
                cmd[0] = str(Path(a[4:]).resolve())
        cmd += [a for a in extra if not a.startswith("bin=")]
        cmd += [f"{app_path}:application"]
        shape_text = f"--workers {w} --threads {t}" + (f" --interface asgi --loop {args.asgi_loop}"
                                                        if asgi else "")
    elif server == "uwsgi":
        # --die-on-term: in uWSGI 2.0 SIGTERM to the master means "reload"; make it "stop".
        cmd = [str(bins["uwsgi"]), "--master", "--die-on-term",
               "--socket" if proto == "uwsgi" else "--fastcgi-socket", str(sock),
               "--chmod-socket=666", "--processes", w, "--threads", t, "--need-app", "--strict",
               "--home", venv, "--wsgi-file", str(app_path), "--callable", "application"]
        if not logs:
            cmd += ["--disable-logging"]
        cmd += [a for s in args.uwsgi_args for a in shlex.split(s)]
        shape_text = f"--master --processes {w} --threads {t}"
    elif server == "gunicorn" and asgi:
        # gunicorn's own asyncio worker (gunicorn/workers/gasgi.py, since 25.x); it ignores
        # --threads (warns), so only the workers are the same.
        cmd = [str(bins["python"]), "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", w,
               "-k", "asgi", "--asgi-loop", args.asgi_loop, "--chdir", str(APPS),
               "--log-level", "warning"]
        if proto == "uwsgi":
            cmd += ["--protocol", "uwsgi"]
        if logs:
            cmd += ["--access-logfile", "-"]
        cmd += [f"{module}:application"]
        shape_text = f"--workers {w} -k asgi --asgi-loop {args.asgi_loop}"
    elif server == "gunicorn":
        cmd = [str(bins["python"]), "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", w,
               "--threads", t, "--chdir", str(APPS), "--log-level", "warning"]
        if proto == "uwsgi":
            cmd += ["--protocol", "uwsgi"]
        if logs:
            cmd += ["--access-logfile", "-"]
        cmd += [f"{module}:application"]
        shape_text = f"--workers {w} --threads {t}" + (" (gthread)" if int(t) > 1 else " (sync)")
    elif server == "granian" and asgi:
        # One Python thread runs the loop; granian's Rust runtime does the I/O.
        cmd = [str(bins["venv"] / "bin" / "granian"), "--interface", "asgi", "--uds", str(sock),
               "--uds-permissions", "438", "--workers", w, "--loop", args.asgi_loop,
               "--working-dir", str(APPS), "--log-level", "warning"]
        cmd += ["--access-log"] if logs else ["--no-access-log"]
        cmd += [f"{module}:application"]
        shape_text = f"--workers {w} --interface asgi --loop {args.asgi_loop}"
    elif server == "granian":
        cmd = [str(bins["venv"] / "bin" / "granian"), "--interface", "wsgi", "--uds", str(sock),
               "--uds-permissions", "438", "--workers", w, "--blocking-threads", t,
               "--working-dir", str(APPS), "--log-level", "warning"]
        cmd += ["--access-log"] if logs else ["--no-access-log"]
        cmd += [f"{module}:application"]
        shape_text = f"--workers {w} --blocking-threads {t}"
    elif server == "flup":
        cmd = [str(bins["python"]), str(tmp / "flup_launcher.py"), str(app_path), "application",
               str(sock), w, t]
        shape_text = ("fcgi_single" if (w, t) == ("1", "1") else
                      f"fcgi threaded, maxThreads {t}" if w == "1" else f"fcgi_fork, {w} children")
        # flup's prefork parent does not stop its children on SIGTERM: a bench needs no
        # clean exit (the socket is in the temp dir), so the whole group is killed.
        return Backend(key, server, proto, cmd, sock, tmp / f"{name}.log", stop_signal=signal.SIGKILL,
                       shape_text=shape_text)
    else:
        die(f"unknown server {server}")
    return Backend(key, server, proto, cmd, sock, tmp / f"{name}.log", shape_text=shape_text)


BUFFERS = """
            {m}_buffer_size 16k;
            {m}_buffers 16 16k;
            {m}_busy_buffers_size 32k;
            {m}_max_temp_file_size 0;"""


def nginx_workers_text(w: str) -> str:
    return "1 worker" if w == "1" else f"worker_processes {w}"


def nginx_conf(b: Backend, tmp: Path, scen: Scenario, workers: str = "1") -> str:
    name = b.key.replace("/", "-").replace(":", "-")
    upstream = ""
    if b.proto == "return":
        body = "hello.py's body"  # see below
        loc = '            default_type text/plain;\n            return 200 "Hello, World!\\n";'
        del body
    elif b.proto == "uwsgi":
        loc = f"            include /etc/nginx/uwsgi_params;\n            uwsgi_pass unix:{b.sock};" + BUFFERS.format(m="uwsgi")
    elif b.proto == "fcgi":
        loc = f"            include /etc/nginx/fastcgi_params;\n            fastcgi_pass unix:{b.sock};" + BUFFERS.format(m="fastcgi")
    elif b.proto == "fcgi-keep":
        upstream = f"    upstream backend {{\n        server unix:{b.sock};\n        keepalive 32;\n    }}\n"
        loc = ("            include /etc/nginx/fastcgi_params;\n            fastcgi_pass backend;\n"
               "            fastcgi_keep_conn on;" + BUFFERS.format(m="fastcgi"))
    elif b.proto == "http":
        upstream = f"    upstream backend {{\n        server unix:{b.sock};\n        keepalive 32;\n    }}\n"
        loc = ("            proxy_pass http://backend;\n            proxy_http_version 1.1;\n"
               "            proxy_set_header Connection \"\";\n            proxy_set_header Host $host;"
               + BUFFERS.format(m="proxy"))
    else:
        die(f"unknown protocol {b.proto}")
    if scen.read_timeout and b.proto != "return":
        m = {"uwsgi": "uwsgi", "fcgi": "fastcgi", "fcgi-keep": "fastcgi", "http": "proxy"}[b.proto]
        loc += f"\n            {m}_read_timeout {scen.read_timeout}s;"
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# generated by benches/bench.py for {b.key}, scenario {scen.name}
{user}daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx-{name}.pid;
error_log {b.errlog} warn;
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
    client_body_buffer_size 128k;
    client_max_body_size 2m;
{upstream}    server {{
        listen 127.0.0.1:{b.port};
        location / {{
{loc}
        }}
    }}
}}
"""


def wait_socket(b: Backend, timeout: float = 90) -> None:
    if b.sock is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.proc.poll() is not None:
            die(f"{b.key} exited with {b.proc.returncode} at start-up; {b.log_path}:\n{tail(b.log_path)}")
        try:
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(b.sock))
            return
        except OSError:
            time.sleep(0.1)
    die(f"{b.key} did not listen within {timeout:.0f}s; {b.log_path}:\n{tail(b.log_path)}")


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def upload_body(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def fetch(port: int, scen: Scenario) -> tuple[int, bytes]:
    data = upload_body(scen.body) if scen.method == "POST" else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=data, method=scen.method)
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with _opener.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(b: Backend, scen: Scenario, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if b.nginx.poll() is not None:
            die(f"nginx for {b.key} exited at start-up:\n{tail(b.errlog)}")
        try:
            status, body = fetch(b.port, scen)
            if status == 200:
                return body
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    die(f"{b.key} via nginx (port {b.port}) never answered 200; last: {last}\n"
        f"{b.log_path}:\n{tail(b.log_path)}\nnginx:\n{tail(b.errlog)}")


# --------------------------------------------------------------------------- nginx error log

ENTRY = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\]")


def read_upstream_errors(b: Backend) -> tuple[int, list[str]]:
    """Error-or-worse entries about the upstream that b's nginx wrote since the last call
    (FastCGI stderr output excluded: that is the app talking)."""
    try:
        with open(b.errlog, "rb") as f:
            f.seek(b.err_offset)
            data = f.read()
    except OSError:
        return 0, []
    end = data.rfind(b"\n") + 1  # whole lines only; a partial one is read next time
    b.err_offset += end
    lines = []
    for line in data[:end].decode(errors="replace").splitlines():
        m = ENTRY.match(line)
        if m and m.group(1) in ("error", "crit", "alert", "emerg") and "upstream" in line \
                and "FastCGI sent in stderr" not in line:
            lines.append(line)
    return len(lines), lines


# --------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    m = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    if not m:
        raise ValueError("no Requests/sec in wrk output:\n" + out)
    lat = dict(re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    reqs = re.search(r"^\s*(\d+) requests in", out, re.M)
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(m.group(1)),
            "p50": to_ms(lat["50"]) if "50" in lat else float("nan"),
            "p99": to_ms(lat["99"]) if "99" in lat else float("nan"),
            "requests": int(reqs.group(1)) if reqs else 0,
            "sock": sum(int(x) for x in se.groups()) if se else 0,
            "non2xx": int(n2.group(1)) if n2 else 0}


class Wrk:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.current: subprocess.Popen | None = None

    def cmd(self, port: int, duration: float, scen: Scenario) -> list[str]:
        a = self.args
        c = ["wrk", f"-t{a.wrk_threads}", f"-c{a.connections}", f"-d{duration:g}s", "--latency"]
        if scen.read_timeout:
            c.append(f"--timeout={4 * scen.read_timeout}s")
        if scen.method == "POST":
            script = self.tmp / f"post-{scen.body}.lua"
            if not script.exists():
                script.write_text(
                    "-- generated by benches/bench.py\n"
                    'wrk.method = "POST"\n'
                    f'wrk.body = string.rep("0123456789abcdef", {scen.body // 16})\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n')
            c += ["-s", str(script)]
        return c + [f"http://127.0.0.1:{port}/"]

    def run(self, port: int, duration: float, scen: Scenario) -> str:
        self.current = subprocess.Popen(self.cmd(port, duration, scen), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = self.current.communicate(timeout=duration + 60)
        finally:
            if self.current.poll() is None:
                self.current.kill()
                self.current.wait()
        if self.current.returncode != 0:
            raise RuntimeError(f"wrk failed ({self.current.returncode}):\n{out}")
        self.current = None
        return out


@dataclass
class Result:
    scenario: str
    shape: str
    key: str
    round: int
    rps: float
    p50: float
    p99: float
    requests: int
    errors: int            # wrk socket errors + non-2xx + nginx upstream error-log lines
    cpu: float             # server process tree CPU µs per request
    nginx_cpu: float       # nginx (master + worker) CPU µs per request
    pss_peak: float        # MiB, max sampled during the run
    detail: dict = field(default_factory=dict)


class PssSampler:
    """Samples the PSS of a process tree once a second while a run lasts; keeps the max."""

    def __init__(self, pid: int | None):
        self.pid, self.peak = pid, 0.0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(1.0 if self.peak else 0.3):
            self.peak = max(self.peak, pss_mib(process_tree(self.pid)))

    def __enter__(self):
        if self.pid is not None:
            self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.pid is not None:
            self.t.join()


def measure(wrk: Wrk, b: Backend, scen: Scenario, shape: str, rnd: int, duration: float) -> Result:
    read_upstream_errors(b)  # anything before this run is not counted
    pids = process_tree(b.proc.pid) if b.proc else []
    npids = process_tree(b.nginx.pid)
    c0, n0, s0 = cpu_seconds(pids), cpu_seconds(npids), sys_seconds(pids)
    th0 = thread_stats(pids) if pids else {}
    with PssSampler(b.proc.pid if b.proc else None) as sampler:
        out = wrk.run(b.port, duration, scen)
    # Workers a master replaced during the run are in its cutime; new ones in the tree.
    pids = sorted(set(pids) | set(process_tree(b.proc.pid))) if b.proc else []
    c1, n1, s1 = cpu_seconds(pids), cpu_seconds(npids), sys_seconds(pids)
    th1 = thread_stats(pids) if pids else {}
    time.sleep(0.1)  # let nginx log the requests wrk gave up on
    upstream, lines = read_upstream_errors(b)
    r = parse_wrk(out)
    n = max(r["requests"], 1)
    threads, wakes, preempts = thread_delta(th0, th1, n) if pids else ({}, float("nan"), float("nan"))
    b.pss_peak = max(b.pss_peak, sampler.peak)
    return Result(scen.name, shape, b.key, rnd, r["rps"], r["p50"], r["p99"], r["requests"],
                  r["sock"] + r["non2xx"] + upstream, (c1 - c0) * 1e6 / n if b.proc else float("nan"),
                  (n1 - n0) * 1e6 / n, sampler.peak,
                  {"sock": r["sock"], "non2xx": r["non2xx"], "upstream": upstream,
                   "upstream_example": lines[:2],
                   "sys_share": (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
                   "threads": threads, "wakeups": wakes, "preempts": preempts})


def serial_run(args, b: Backend, scen: Scenario, duration: float, tmp: Path) -> dict:
    """Context switches per request with one request at a time (`wrk -t1 -c1`): every
    thread of the server's process tree, voluntary (went to sleep: a wake-up) and
    involuntary (preempted), from /proc/PID/task/TID/status before and after. One at a
    time is where "switches per simple request" means something: under concurrency a
    wake-up serves several requests and preemptions depend on the machine's load."""
    one = argparse.Namespace(**{**vars(args), "connections": 1, "wrk_threads": 1})
    wrk = Wrk(one, tmp)
    pids = process_tree(b.proc.pid)
    th0 = thread_stats(pids)
    c0 = cpu_seconds(pids)
    r = parse_wrk(wrk.run(b.port, duration, scen))
    pids = sorted(set(pids) | set(process_tree(b.proc.pid)))
    th1 = thread_stats(pids)
    c1 = cpu_seconds(pids)
    n = max(r["requests"], 1)
    threads, vol, invol = thread_delta(th0, th1, n)
    log(f"   {b.key:<22} {vol + invol:5.2f} switches/request ({vol:.2f} voluntary, {invol:.2f} "
        f"involuntary), {r['rps']:,.0f} req/s, {(c1 - c0) * 1e6 / n:.1f} µs CPU/request; by thread "
        f"(voluntary / involuntary): " + ", ".join(
            f"{k} {w:.2f} / {i:.2f}" for k, (c, w, i) in sorted(threads.items(), key=lambda kv: -kv[1][1])
            if w >= 0.01 or i >= 0.01))
    return {"requests": r["requests"], "rps": r["rps"], "voluntary": vol, "involuntary": invol,
            "cpu": (c1 - c0) * 1e6 / n, "threads": threads}


def strace_run(wrk: Wrk, b: Backend, scen: Scenario, duration: float, tmp: Path) -> dict:
    """One wrk run with `strace -c -f` attached to every process of b's server (all
    threads): system calls and failed ones (e.g. accept4 EAGAIN: a wake-up for nothing)
    per request, across the workers."""
    out = tmp / f"strace-{b.key.replace('/', '-')}.txt"
    cmd = ["strace", "-c", "-f", "-o", str(out)]
    for pid in process_tree(b.proc.pid):
        cmd += ["-p", str(pid)]
    errp = tmp / "strace.err"
    with open(errp, "wb") as err:
        st = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        time.sleep(1.0)  # attach to every thread
        r = parse_wrk(wrk.run(b.port, duration, scen))
    finally:
        st.send_signal(signal.SIGINT)
        try:
            st.wait(timeout=30)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait()
    n = max(r["requests"], 1)
    calls, errors, total, total_err = {}, {}, 0, 0
    for line in out.read_text(errors="replace").splitlines() if out.exists() else []:
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit():
            name, c = parts[-1], int(parts[3])
            e = int(parts[4]) if len(parts) == 6 else 0
            if name == "total":
                total, total_err = c, e
            else:
                calls[name], errors[name] = c, e
    top = sorted(calls.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} {v / n:.2f}" + (f" ({errors[k] / n:.2f} failed)" if errors[k] / n >= 0.01 else "")
                     for k, v in top if v / n >= 0.01)
    log(f"   {b.key:<17} {total / n:6.2f} syscalls/request ({total_err / n:.2f} failed), "
        f"{r['rps']:,.0f} req/s under strace: {text}")
    return {"per_request": total / n, "failed_per_request": total_err / n,
            "by_syscall": {k: v / n for k, v in top}, "failed": {k: v / n for k, v in errors.items() if v}}


# --------------------------------------------------------------------------- report


def fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cols, widths)))


def num(x: float, fmt: str = "{:.1f}") -> str:
    return "-" if x != x else fmt.format(x)


ROUND_HDR = ["round", "variant", "req/s", "p50 ms", "p99 ms", "requests", "errors",
             "cpu us/req", "nginx us/req", "PSS MiB"]
ROUND_W = [5, 22, 9, 7, 7, 9, 6, 10, 12, 7]


def round_line(r: Result) -> str:
    return fmt_row([r.round or "warm", r.key, f"{r.rps:,.0f}", num(r.p50, "{:.2f}"),
                    num(r.p99, "{:.2f}"), r.requests, r.errors, num(r.cpu), num(r.nginx_cpu),
                    num(r.pss_peak) if r.pss_peak else "-"], ROUND_W)


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[Result], backends: list[Backend], reference: str = REFERENCE) -> list[dict]:
    """One row per variant: medians over rounds, errors summed, and the per-round ratios
    to the reference (uWSGI uwsgi unless told) with their median. The ratios keep the key
    "x_uwsgi" whatever the reference is (the JSON's shape); "reference" names it."""
    rows = []
    ref = [r for r in results if r.key == reference]
    for b in backends:
        rs = [r for r in results if r.key == b.key]
        if not rs:
            continue
        row = {"key": b.key, "label": b.label, "shape_text": b.shape_text,
               "rps": med(r.rps for r in rs), "p50": med(r.p50 for r in rs),
               "p99": med(r.p99 for r in rs), "cpu": med(r.cpu for r in rs),
               "nginx_cpu": med(r.nginx_cpu for r in rs), "errors": sum(r.errors for r in rs),
               "requests": sum(r.requests for r in rs), "pss_idle": b.pss_idle,
               "pss_peak": b.pss_peak if b.proc else float("nan"),
               "rounds_rps": [r.rps for r in rs],
               "sys_share": med(r.detail["sys_share"] for r in rs),
               "wakeups": med(r.detail["wakeups"] for r in rs),
               "preempts": med(r.detail["preempts"] for r in rs), "reference": reference,
               "threads": {k: tuple(med(r.detail["threads"].get(k, (0.0, 0.0, 0.0))[i] for r in rs)
                                    for i in range(3))
                           for k in sorted({k for r in rs for k in r.detail["threads"]})}}
        ratios = {"rps": [], "cpu": [], "nginx_cpu": [], "p99": []}
        for r in rs:
            u = next((x for x in ref if x.round == r.round), None)
            if u is None:
                continue
            for k in ratios:
                a, bb = getattr(r, k), getattr(u, k)
                if a == a and bb == bb and bb > 0:
                    ratios[k].append(a / bb)
        row["x_uwsgi"] = {k: med(v) for k, v in ratios.items()}
        row["x_uwsgi_rounds"] = ratios
        refb = next((x for x in backends if x.key == reference), None)
        row["x_uwsgi"]["pss_idle"] = (b.pss_idle / refb.pss_idle if refb and refb.pss_idle and b.proc
                                      else float("nan"))
        row["x_uwsgi"]["pss_peak"] = (b.pss_peak / refb.pss_peak if refb and refb.pss_peak and b.proc
                                      else float("nan"))
        rows.append(row)
    return rows


def ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


SUM_HDR = ["variant", "req/s", "p50 ms", "p99 ms", "errors", "cpu us/req", "sys %", "wakes/req",
           "preempt/req", "nginx us/req", "PSS idle", "PSS peak", "x req/s", "x cpu", "x nginx", "x PSS"]
SUM_W = [22, 9, 7, 7, 6, 10, 5, 9, 11, 12, 8, 8, 7, 6, 7, 6]


def print_summary(scen: Scenario, shape: str, rows: list[dict], reference: str = REFERENCE) -> None:
    log(f"\n== {scen.name} ({scen.text}), {shape}: medians over rounds; sys % = kernel share of the "
        f"server's CPU; wakes/req = voluntary context switches of all its threads per request; "
        f"preempt/req = involuntary ones; x = ratio to {reference}, median of per-round ratios")
    log(fmt_row(SUM_HDR, SUM_W))
    for r in rows:
        x = r["x_uwsgi"]
        log(fmt_row([r["key"], f"{r['rps']:,.0f}", num(r["p50"], "{:.2f}"), num(r["p99"], "{:.2f}"),
                     r["errors"], num(r["cpu"]), num(r["sys_share"] * 100, "{:.0f}"),
                     num(r["wakeups"], "{:.2f}"), num(r["preempts"], "{:.2f}"), num(r["nginx_cpu"]),
                     num(r["pss_idle"]) if r["pss_idle"] else "-", num(r["pss_peak"]),
                     ratio(x["rps"]), ratio(x["cpu"]), ratio(x["nginx_cpu"]), ratio(x["pss_peak"])],
                    SUM_W))
    log("-- per request by thread (N = any number): CPU µs / wake-ups / preemptions, medians over rounds:")
    for r in rows:
        if r["threads"]:
            log(f"   {r['key']:<22} " + ", ".join(f"{k} {c:.1f} / {w:.2f} / {i:.2f}" for k, (c, w, i) in
                                                sorted(r["threads"].items(), key=lambda kv: -kv[1][0])
                                                if c >= 0.05 or w >= 0.01 or i >= 0.01))


def markdown(groups: list[dict]) -> str:
    ref = groups[0].get("reference", REFERENCE) if groups else REFERENCE
    x = "× uWSGI" if ref == REFERENCE else f"× {ref}"
    lines = ["| scenario | shape | variant | req/s | p50 ms | p99 ms | errors | server CPU µs/req "
             f"| wake-ups/req | nginx CPU µs/req | PSS idle / peak MiB | {x} req/s | {x} CPU "
             f"| {x} nginx CPU | {x} PSS peak |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        for r in g["rows"]:
            x = r["x_uwsgi"]
            pss = "-" if not r["pss_idle"] else f"{r['pss_idle']:.1f} / {r['pss_peak']:.1f}"
            lines.append(
                f"| {g['scenario']} | {g['shape']} | {r['key']} | {r['rps']:,.0f} | {num(r['p50'], '{:.2f}')} "
                f"| {num(r['p99'], '{:.2f}')} | {r['errors']} | {num(r['cpu'], '{:.0f}')} "
                f"| {num(r['wakeups'], '{:.2f}')} | {num(r['nginx_cpu'], '{:.0f}')} | {pss} | {ratio(x['rps'])} | {ratio(x['cpu'])} "
                f"| {ratio(x['nginx_cpu'])} | {ratio(x['pss_peak'])} |")
    return "\n".join(lines)


# Issue 9's targets that a run behind nginx can check: (text, scenario, shape, variant,
# figure, "<=" or ">=", bound). Figures: ratios to uWSGI uwsgi ("x_rps", "x_cpu",
# "x_nginx_cpu", "x_p99", "x_pss_idle", "x_pss_peak") or "errors". The instruction and
# syscall targets are instructions.py's.
TARGETS = [
    ("uwsgi_pass hello: server CPU/request", "hello", "2x1", "postern/uwsgi", "x_cpu", "<=", 0.8),
    ("uwsgi_pass hello: p99", "hello", "2x1", "postern/uwsgi", "x_p99", "<=", 1.0),
    ("FastCGI plain hello: server CPU/request", "hello", "2x1", "postern/fcgi", "x_cpu", "<=", 0.9),
    ("FastCGI keep-conn hello: server CPU/request", "hello", "2x1", "postern/fcgi-keep", "x_cpu", "<=", 0.5),
    ("FastCGI keep-conn hello: req/s", "hello", "2x1", "postern/fcgi-keep", "x_rps", ">=", 1.5),
    ("FastCGI keep-conn hello: upstream errors", "hello", "2x1", "postern/fcgi-keep", "errors", "<=", 0),
    ("stream 100 x 1 KiB (uwsgi): req/s", "stream", "2x1", "postern/uwsgi", "x_rps", ">=", 1.3),
    ("stream 100 x 1 KiB (uwsgi): nginx CPU/request", "stream", "2x1", "postern/uwsgi", "x_nginx_cpu", "<", 1.0),
    ("2 x 4 hello (uwsgi): req/s", "hello", "2x4", "postern/uwsgi", "x_rps", ">=", 1.3),
    ("1 MiB response (uwsgi): server CPU/request", "big", "2x1", "postern/uwsgi", "x_cpu", "<=", 0.8),
    ("1 MiB response (uwsgi): req/s", "big", "2x1", "postern/uwsgi", "x_rps", ">=", 1.0),
    ("64 KiB upload (uwsgi): server CPU/request", "upload", "2x1", "postern/uwsgi", "x_cpu", "<=", 0.8),
    ("64 KiB upload (uwsgi): req/s", "upload", "2x1", "postern/uwsgi", "x_rps", ">=", 1.0),
    ("64 KiB upload (uwsgi): peak PSS under load", "upload", "2x1", "postern/uwsgi", "x_pss_peak", "<=", 1.0),
    ("master + 2 idle workers: PSS", "hello", "2x1", "postern/uwsgi", "x_pss_idle", "<=", 1.0),
]


def check_targets(groups: list[dict]) -> list[tuple[str, str, str, str]]:
    """(target, bound, measured, verdict) for every target whose group and variant ran."""
    out = []
    for text, scen, shape, key, fig, op, bound in TARGETS:
        row = next((r for g in groups if g["scenario"] == scen and g["shape"] == shape
                    for r in g["rows"] if r["key"] == key), None)
        if row is None or row.get("reference", REFERENCE) != "uwsgi/uwsgi":
            continue
        x = row["errors"] if fig == "errors" else row["x_uwsgi"].get(fig.removeprefix("x_"), float("nan"))
        if x != x:
            continue
        ok = {"<=": x <= bound, ">=": x >= bound, "<": x < bound}[op]
        shown = f"{x}" if fig == "errors" else f"{x:.2f}×"
        want = f"{op} {bound}" if fig == "errors" else f"{op} {bound}× uWSGI"
        if ok:
            verdict = "met"
        elif fig == "errors":
            verdict = "not met"
        else:
            verdict = f"not met (by {abs(x / bound - 1) * 100:.0f}%)"
        out.append((text, want, shown, verdict))
    return out


# Issue 11's targets (the ASGI path): (text, scenario, shape, variant, versus, figure, op,
# bound). The figure is the median of the per-round ratios variant / versus ("rps",
# "cpu", "nginx_cpu", "p99"), both run back to back in each round; op None: reported, no
# bound. versus may name alternatives (the first that ran counts).
ASGI_TARGETS = [
    ("ASGI hello, uwsgi_pass: req/s / postern WSGI", "hello", "2x1", "postern-asgi/uwsgi",
     ("postern/uwsgi",), "rps", ">=", 0.9),
    ("ASGI hello, uwsgi_pass: server CPU/req / postern WSGI", "hello", "2x1", "postern-asgi/uwsgi",
     ("postern/uwsgi",), "cpu", "<=", 1.2),
    ("ASGI hello: req/s / gunicorn -k asgi", "hello", "2x1", "postern-asgi/uwsgi",
     ("gunicorn-asgi/uwsgi", "gunicorn-asgi/http"), "rps", ">=", 3.0),
    ("ASGI hello: server CPU/req / gunicorn -k asgi", "hello", "2x1", "postern-asgi/uwsgi",
     ("gunicorn-asgi/uwsgi", "gunicorn-asgi/http"), "cpu", None, None),
    ("ASGI hello: req/s / granian ASGI (proxy_pass)", "hello", "2x1", "postern-asgi/uwsgi",
     ("granian-asgi/http",), "rps", None, None),
    ("ASGI hello: server CPU/req / granian ASGI", "hello", "2x1", "postern-asgi/uwsgi",
     ("granian-asgi/http",), "cpu", None, None),
    ("ASGI hello: nginx CPU/req / granian ASGI", "hello", "2x1", "postern-asgi/uwsgi",
     ("granian-asgi/http",), "nginx_cpu", None, None),
    ("1x1 ASGI hello: req/s / postern WSGI", "hello", "1x1", "postern-asgi/uwsgi",
     ("postern/uwsgi",), "rps", ">=", 0.9),
    ("1x1 ASGI hello: server CPU/req / postern WSGI", "hello", "1x1", "postern-asgi/uwsgi",
     ("postern/uwsgi",), "cpu", "<=", 1.2),
    ("1x1 ASGI hello: req/s / gunicorn -k asgi", "hello", "1x1", "postern-asgi/uwsgi",
     ("gunicorn-asgi/uwsgi", "gunicorn-asgi/http"), "rps", ">=", 3.0),
    ("1x1 ASGI hello: req/s / granian ASGI", "hello", "1x1", "postern-asgi/uwsgi",
     ("granian-asgi/http",), "rps", None, None),
]


def check_asgi_targets(groups: list[dict]) -> list[tuple[str, str, str, str]]:
    """(target, bound, measured, verdict) for each ASGI target whose variants both ran;
    plus the context switches per request of the serial runs (issue 11: about one on the
    ASGI path)."""
    out = []
    for text, scen, shape, key, versus, fig, op, bound in ASGI_TARGETS:
        g = next((g for g in groups if g["scenario"] == scen and g["shape"] == shape), None)
        if g is None:
            continue
        rounds = g["rounds"]
        other = next((v for v in versus if any(r["key"] == v for r in rounds)), None)
        if other is None or not any(r["key"] == key for r in rounds):
            continue
        xs = []
        for r in rounds:
            if r["key"] != key or not r["round"]:
                continue
            u = next((x for x in rounds if x["key"] == other and x["round"] == r["round"]), None)
            if u and r[fig] == r[fig] and u[fig] == u[fig] and u[fig] > 0:
                xs.append(r[fig] / u[fig])
        x = med(xs)
        if x != x:
            continue
        shown = f"{x:.2f}×"
        if op is None:
            want, verdict = f"(report) × {other}", "reported"
        else:
            want = f"{op} {bound}× {other}"
            ok = {"<=": x <= bound, ">=": x >= bound}[op]
            verdict = "met" if ok else f"not met (by {abs(x / bound - 1) * 100:.0f}%)"
        out.append((text, want, shown, verdict))
    for g in groups:
        for k in ("postern-asgi/uwsgi", "postern/uwsgi"):
            s = g.get("serial", {}).get(k)
            if s:
                want = "about 1" if k.startswith("postern-asgi") else "(the WSGI path)"
                out.append((f"{g['shape']} {g['scenario']} {k}: context switches/req, one at a time", want,
                            f"{s['voluntary'] + s['involuntary']:.2f}",
                            f"{s['voluntary']:.2f} voluntary + {s['involuntary']:.2f} involuntary"))
    return out


# --------------------------------------------------------------------------- a group


def run_group(args, scen: Scenario, shape: str, keys: list[str], bins: dict, env: dict,
              versions: dict) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{scen.name}-{shape}-"))
    procs = Procs()
    wrk = Wrk(args, tmp)
    results: list[Result] = []
    try:
        (tmp / "flup_launcher.py").write_text(FLUP_LAUNCHER)
        backends = [make_backend(k, scen, shape, tmp, bins, args) for k in keys]
        for b in backends:
            if b.cmd:
                (tmp / f"{b.key.replace('/', '-')}.cmd").write_text(shlex.join(b.cmd) + "\n")
                b.proc = procs.start(b.key, b.cmd, stop_signal=b.stop_signal, log_path=b.log_path,
                                     cwd=tmp, env=env)
        for b in backends:
            wait_socket(b)
        for b in backends:
            name = b.key.replace("/", "-")
            b.port = free_port()
            b.errlog = tmp / f"nginx-{name}-error.log"
            conf = tmp / f"nginx-{name}.conf"
            conf.write_text(nginx_conf(b, tmp, scen, args.nginx_workers))
            ncmd = [NGINX, "-p", str(tmp), "-e", str(b.errlog), "-c", str(conf)]
            b.nginx = procs.start(f"nginx {b.key}", ncmd, stop_signal=signal.SIGQUIT,
                                  log_path=tmp / f"nginx-{name}.log", cwd=tmp)
        log(f"\n=== group: {scen.name} ({scen.text}), {shape} (workers x threads); temp dir {tmp}")
        bodies = {}
        for b in backends:
            body = wait_http(b, scen)
            bodies[b.key] = body
            log(f"   {b.key:<17} :{b.port}  {len(body)} bytes  "
                f"{shlex.join(b.cmd[:1] + [a for a in b.cmd[1:]]) if b.cmd else '(nginx only)'}")
        for k, body in bodies.items():
            if scen.size is not None and len(body) != scen.size:
                die(f"{k}: {len(body)} bytes, expected {scen.size}")
            if scen.method == "POST" and body != upload_body(scen.body):
                die(f"{k}: the echoed body differs from the one sent")
        backend_bodies = {k: v for k, v in bodies.items() if not k.startswith("nginx/")}
        if len(set(backend_bodies.values())) > 1:
            die("the bodies differ: " + "; ".join(f"{k}: {v[:80]!r}" for k, v in backend_bodies.items()))
        time.sleep(1)
        for b in backends:
            if b.proc:
                b.pss_idle = pss_mib(process_tree(b.proc.pid))
        for i in range(args.hogs):
            procs.start(f"hog {i}", [sys.executable, "-c", "while True: pass"],
                        stop_signal=signal.SIGKILL, log_path=tmp / "hogs.log", cwd=tmp)
        if args.hogs:
            log(f"   {args.hogs} CPU-bound process(es) running beside the servers (--hogs)")
        if args.warmup > 0:
            for b in backends:
                r = measure(wrk, b, scen, shape, 0, args.warmup)
                log(round_line(r))
        log(f"-- {args.rounds} round(s) x {args.duration:g} s, "
            f"{shlex.join(wrk.cmd(0, args.duration, scen)).replace(':0/', ':PORT/')}")
        log(fmt_row(ROUND_HDR, ROUND_W))
        for k in range(1, args.rounds + 1):
            order = backends if k % 2 == 1 else backends[::-1]
            for b in order:
                time.sleep(args.pause)
                for o in backends:
                    if o.proc and o.proc.poll() is not None:
                        die(f"{o.key} died (exit {o.proc.returncode}); {o.log_path}:\n{tail(o.log_path)}")
                r = measure(wrk, b, scen, shape, k, args.duration)
                results.append(r)
                log(round_line(r))
                for line in r.detail["upstream_example"][:1]:
                    log(f"      nginx: {line[:240]}")
        rows = summarize(results, backends, args.reference)
        print_summary(scen, shape, rows, args.reference)
        serial = {}
        if args.serial:
            log(f"\n-- context switches per request, one request at a time ({args.serial} s of "
                f"wrk -t1 -c1 per server; all threads of its process tree, /proc/PID/task/*/status)")
            for b in backends:
                if b.proc:
                    serial[b.key] = serial_run(args, b, scen, args.serial, tmp)
        syscalls = {}
        if args.syscalls:
            log(f"\n-- system calls per request under load (strace -c -f on the server's processes, "
                f"{args.duration} s of the same wrk; strace slows the server, the counts are what matter)")
            for b in backends:
                if b.proc:
                    syscalls[b.key] = strace_run(wrk, b, scen, args.duration, tmp)
        return {"scenario": scen.name, "shape": shape, "rows": rows, "syscalls": syscalls,
                "serial": serial, "reference": args.reference, "rounds": [r.__dict__ for r in results]}
    finally:
        if wrk.current is not None and wrk.current.poll() is None:
            wrk.current.kill()
            wrk.current.wait()
        procs.stop_all()
        if args.keep_tmp:
            log(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- main


def csv_choice(allowed, what):
    def parse_list(text: str) -> list[str]:
        items = [x.strip().lower() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{what}: pick from {','.join(allowed)} (got {text!r})")
        return [x for x in allowed if x in items]  # canonical order, no duplicates
    return parse_list


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="postern vs uWSGI, gunicorn, granian and flup, each behind its own nginx, with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default=None,
                    help="a predefined matrix (default: quick, unless --scenarios/--shapes are given); "
                         "the other flags narrow it")
    ap.add_argument("--scenarios", type=csv_choice(list(SCENARIOS), "--scenarios"),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--shapes", type=csv_choice(list(SHAPES), "--shapes"),
                    help=f"workers x threads, comma-separated subset of {','.join(SHAPES)}")
    ap.add_argument("--servers", type=csv_choice(list(SERVERS), "--servers"),
                    help=f"comma-separated subset of {','.join(SERVERS)}")
    ap.add_argument("--protocols", type=csv_choice(list(PROTOCOLS), "--protocols"),
                    help=f"comma-separated subset of {','.join(PROTOCOLS)} (uWSGI uwsgi always runs "
                         "when uwsgi is a selected server: it is the reference)")
    ap.add_argument("--reference", choices=list(VARIANTS), default=None,
                    help="the variant every ratio is to (default: uwsgi/uwsgi; the asgi presets: "
                         "postern/uwsgi, postern's own WSGI path)")
    ap.add_argument("--asgi-loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="event loop of every ASGI server (postern --loop, gunicorn --asgi-loop, "
                         "granian --loop); uvloop is then installed into the venv")
    ap.add_argument("--serial", type=int, default=None, metavar="S",
                    help="after a group's rounds, S seconds of wrk -t1 -c1 per server: context "
                         "switches per request one at a time (asgi preset: 3; 0: none)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (preset: quick 2, full 4)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (quick 3, full 3)")
    ap.add_argument("--warmup", type=int, help="seconds of wrk per variant before round 1 (0: none)")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of idle between wrk runs")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    ap.add_argument("--nginx-workers", default="1", metavar="N|auto",
                    help="worker_processes of each server's nginx: 1 keeps nginx's own CPU one "
                         "process and comparable run to run; auto (one per core, the packaged "
                         "nginx.conf's value) is what a production host runs, and on a machine where "
                         "one nginx worker is the limit it lets the servers behind show their own")
    ap.add_argument("--hogs", type=int, default=0, metavar="N",
                    help="N CPU-bound processes run beside the servers during the runs (every CPU "
                         "busy: what a scheduling policy costs the app's own waits, e.g. --scenarios "
                         "sleep --shapes 1x4 --connections 4 --hogs 2)")
    ap.add_argument("--logs", action="store_true",
                    help="per-request access logs on (postern --log-level info, uWSGI's default, "
                         "gunicorn --access-logfile -, granian --access-log); default off for all")
    ap.add_argument("--postern-bin", help="use this postern binary instead of cargo build --release")
    ap.add_argument("--postern-label", metavar="TEXT",
                    help="what --postern-bin was built from (e.g. a commit), for the report")
    ap.add_argument("--postern-args", action="append", default=[], metavar="ARGS",
                    help='extra postern arguments, shell-split; use the = form: --postern-args="--preload"')
    ap.add_argument("--postern-variant", action="append", default=[], metavar="NAME=ARGS",
                    help="one more postern variant beside each postern one, in the same rounds, with "
                         "these extra arguments (shell-split, after --postern-args), labelled "
                         "'postern NAME': e.g. --postern-variant='off=--sched-batch=off'; an argument bin=PATH runs that binary instead (two builds compared in one run)")
    ap.add_argument("--uwsgi-args", action="append", default=[], metavar="ARGS",
                    help="extra uWSGI arguments, shell-split")
    ap.add_argument("--python", default="python3", help="the interpreter the venv is made with")
    ap.add_argument("--venv", default=str(REPO / "target" / "bench-venv"), help="peers' venv (cached)")
    ap.add_argument("--format", choices=["text", "markdown"], default="text",
                    help="markdown: also print one table for a README")
    ap.add_argument("--syscalls", action="store_true",
                    help="after a group's rounds, one more run per server under strace -c -f: "
                         "system calls (and failed ones: EAGAIN accepts) per request under load")
    ap.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, confs)")
    ap.add_argument("--list", action="store_true", help="print variants, scenarios, presets and exit")
    args = ap.parse_args(argv)
    if args.nginx_workers != "auto" and not (args.nginx_workers.isdigit() and int(args.nginx_workers) > 0):
        ap.error(f"--nginx-workers {args.nginx_workers!r}: a number of workers, or auto")
    args.variants = {}
    for v in args.postern_variant:
        name, eq, extra = v.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in args.variants:
            ap.error(f"--postern-variant {v!r}: NAME=ARGS, NAME made of letters, digits, _.- and unique")
        args.variants[name] = shlex.split(extra)
        server = f"postern:{name}"
        LABELS[server] = f"postern {name}"
        LABELS[f"postern-asgi:{name}"] = f"postern ASGI {name}"
        for k, (srv, proto, text) in list(VARIANTS.items()):
            if srv in ("postern", "postern-asgi"):
                VARIANTS[f"{srv}:{name}/{proto}"] = (f"{srv}:{name}", proto, f"{text}, + {extra}")
    for k in ("rounds", "duration", "connections"):
        v = getattr(args, k)
        if v is not None and v < 1:
            ap.error(f"--{k} must be positive")
    return args


def plan(args, gunicorn_uwsgi: bool, gunicorn_asgi: bool = True) -> list[tuple[str, str, list[str]]]:
    """The groups to run: (scenario, shape, variant keys)."""
    preset_name = args.preset or ("quick" if not (args.scenarios or args.shapes) else None)
    if preset_name:
        preset = PRESETS[preset_name]
        for k in ("rounds", "duration", "warmup", "serial", "reference"):
            if getattr(args, k) is None:
                setattr(args, k, preset.get(k))
        groups = [(s, sh, list(ks)) for s, sh, ks in preset["groups"]
                  if (not args.scenarios or s in args.scenarios) and (not args.shapes or sh in args.shapes)]
        if args.servers and set(args.servers) - {v.split("/")[0] for _, _, ks in groups for v in ks}:
            # A server the preset does not run (e.g. granian in quick): add it to every group.
            extra = [k for k in ALL_BACKENDS + ASGI_BACKENDS if k.split("/")[0] in args.servers]
            groups = [(s, sh, ks + [k for k in extra if k not in ks]) for s, sh, ks in groups]
    else:
        args.rounds = args.rounds or 3
        args.duration = args.duration or 4
        args.warmup = 1 if args.warmup is None else args.warmup
        asgi = ASGI_BACKENDS if args.servers and any(x.endswith("-asgi") for x in args.servers) else []
        groups = [(s, sh, ["nginx/return"] + ALL_BACKENDS + asgi)
                  for s in (args.scenarios or ["hello"]) for sh in (args.shapes or ["2x1"])]
    args.reference = args.reference or REFERENCE
    args.serial = args.serial or 0
    out = []
    for s, sh, ks in groups:
        sel = []
        for k in ks:
            if k.startswith("gunicorn/"):
                k = "gunicorn/uwsgi" if gunicorn_uwsgi else "gunicorn/http"
            if k.startswith("gunicorn-asgi/"):
                if not gunicorn_asgi:
                    continue  # said once in main
                k = "gunicorn-asgi/uwsgi" if gunicorn_uwsgi else "gunicorn-asgi/http"
            server, proto, _ = VARIANTS[k]
            if args.servers and server not in args.servers:
                continue
            if args.protocols and proto not in args.protocols and k != args.reference:
                continue
            if supported(k, sh, s) is not None or k in sel:
                continue
            sel.append(k)
            if server in ("postern", "postern-asgi"):
                sel += [f"{server}:{name}/{proto}" for name in args.variants]
        if sel:
            out.append((s, sh, sel))
    if not out:
        die("nothing to run with these --scenarios/--shapes/--servers/--protocols")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        log("variants (server/protocol):")
        for k, (_, _, text) in VARIANTS.items():
            log(f"  {k:<18} {text}")
        log("scenarios:")
        for s in SCENARIOS.values():
            log(f"  {s.name:<8} benches/apps/{s.app}: {s.text}")
        for name, p in PRESETS.items():
            log(f"preset {name}: {p['rounds']} rounds x {p['duration']} s, warm-up {p['warmup']} s")
            for s, sh, ks in p["groups"]:
                log(f"  {s} {sh}: {', '.join(ks)}")
        return 0
    cmdline = shlex.join(["python3", os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
    for tool in ("wrk", NGINX) + (("strace",) if args.syscalls else ()):
        if not shutil.which(tool):
            die(f"{tool} not found")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    venv = Path(args.venv).resolve()
    vpy = ensure_venv(venv, args.python)
    bins = {"venv": venv, "python": vpy, "uwsgi": venv / "bin" / "uwsgi"}
    gunicorn_uwsgi = gunicorn_has_uwsgi(vpy)
    gunicorn_asgi = gunicorn_has_asgi(vpy)
    groups = plan(args, gunicorn_uwsgi, gunicorn_asgi)
    if not gunicorn_asgi and args.preset and args.preset.startswith("asgi"):
        log(f"   gunicorn {pip_version(vpy, 'gunicorn')} has no ASGI worker (no 'asgi' in "
            f"gunicorn.workers.SUPPORTED_WORKERS): its variants are left out")
    if any(k.split("/")[0].endswith("-asgi") for _, _, ks in groups for k in ks) and args.asgi_loop == "uvloop":
        ensure_venv(venv, args.python, ["uvloop"])
    if any(k.startswith(("postern/", "postern-asgi/")) for _, _, ks in groups for k in ks):
        bins["postern"] = build_postern(args.postern_bin)
        bins["postern_help"] = subprocess.run([str(bins["postern"]), "--help"], capture_output=True,
                                              text=True).stdout
    versions = {
        "nginx": first_line([NGINX, "-v"]).rpartition("/")[2],
        "wrk": (first_line(["wrk", "-v"]).split() + ["?", "?"])[1],
        "python": first_line([str(vpy), "-c", "import sys; print(sys.version.split()[0])"]),
        "uwsgi": first_line([str(bins["uwsgi"]), "--version"]),
        "gunicorn": pip_version(vpy, "gunicorn"), "granian": pip_version(vpy, "granian"),
        "flup": pip_version(vpy, "flup"), "flask": pip_version(vpy, "flask"),
    }
    if "postern" in bins:
        v = first_line([str(bins["postern"]), "-V"])
        versions["postern"] = v.removeprefix("postern ").strip()
        pv = subprocess.run([str(bins["postern"]), "-V"], capture_output=True, text=True).stdout.split("\n")
        versions["postern_python"] = pv[1].split()[1] if len(pv) > 1 and len(pv[1].split()) > 1 else "?"
        if versions["postern_python"] not in ("?", versions["python"]):
            log(f"WARNING: postern embeds Python {versions['postern_python']}, the venv has {versions['python']}")
        try:
            if args.postern_bin:
                raise OSError("a given binary: its commit is unknown")
            versions["commit"] = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                                    "--", "src", "Cargo.toml", "Cargo.lock"],
                                   capture_output=True, text=True).stdout.strip()
            versions["commit"] += " (+ uncommitted changes in src/)" if dirty else ""
        except OSError:
            versions["commit"] = args.postern_label or f"binary {bins['postern']}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    total = sum(len(ks) * (args.rounds * (args.duration + args.pause) + args.warmup) + 6 for _, _, ks in groups)
    log(f"== {len(groups)} group(s), {args.rounds} round(s) x {args.duration} s, wrk -t{args.wrk_threads} "
        f"-c{args.connections}; about {total / 60:.0f} min")
    log(f"   postern {versions.get('postern', '-')} at {versions.get('commit', '-')}, uWSGI {versions['uwsgi']}, "
        f"gunicorn {versions['gunicorn']} ({'uwsgi protocol' if gunicorn_uwsgi else 'no uwsgi protocol: HTTP'}), "
        f"granian {versions['granian']}, flup {versions['flup']}, Flask {versions['flask']}, "
        f"Python {versions['python']}, nginx {versions['nginx']}, wrk {versions['wrk']}")
    log(f"   {os.cpu_count()} CPUs ({cpu_model}), load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"request logging {'on' if args.logs else 'off'}")
    done = []
    try:
        for s, sh, ks in groups:
            done.append(run_group(args, SCENARIOS[s], sh, ks, bins, env, versions))
    except KeyboardInterrupt:
        log("\ninterrupted; stopping everything")
        if not done:
            return 130
    log(f"\nload avg at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log(f"command: {cmdline}")
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "cmdline": cmdline,
                                               "cpus": os.cpu_count(), "cpu_model": cpu_model,
                                               "groups": done}, indent=1, default=str))
        log(f"results: {args.json}")
    checks = check_targets(done)
    if checks:
        log("\n== issue 9 targets (ratios to uWSGI uwsgi in the same rounds)")
        for text, want, shown, verdict in checks:
            log(f"   {text:<46} {want:<18} {shown:>8}  {verdict}")
    asgi_checks = check_asgi_targets(done)
    if asgi_checks:
        log("\n== issue 11 targets (median of per-round ratios; the variants ran back to back in each round)")
        for text, want, shown, verdict in asgi_checks:
            log(f"   {text:<58} {want:<32} {shown:>8}  {verdict}")
    checks = checks + asgi_checks
    if args.format == "markdown":
        log("\n== markdown\n")
        log(markdown(done))
        if checks:
            log("")
            log("| target | bound | measured | |")
            log("|---|---|---:|---|")
            for text, want, shown, verdict in checks:
                log(f"| {text} | {want} | {shown} | {verdict} |")
        log("")
        log(f"Medians of {args.rounds} interleaved rounds × {args.duration} s, "
            f"`wrk -t{args.wrk_threads} -c{args.connections} --latency`, each server behind its own "
            f"nginx {versions['nginx']} ({nginx_workers_text(args.nginx_workers)}) over a unix socket, request logging "
            f"{'on' if args.logs else 'off'}; "
            + (f"× uWSGI = median of the per-round ratios to uWSGI {versions['uwsgi']} (`--master`, "
               f"uwsgi protocol) in the same group. " if args.reference == REFERENCE else
               f"× {args.reference} = median of the per-round ratios to {args.reference} in the same "
               f"group; ASGI loop: {args.asgi_loop}. ")
            + f"postern "
            f"{versions.get('postern', '-')} ({versions.get('commit', '-')}), gunicorn {versions['gunicorn']}, "
            f"granian {versions['granian']}, flup {versions['flup']}, Flask {versions['flask']}, "
            f"Python {versions['python']}; {os.cpu_count()} × {cpu_model}.")
        log("")
        log(f"```sh\n{cmdline}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
