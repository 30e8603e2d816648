#!/usr/bin/env python3
"""Throughput/latency comparison: postern vs uWSGI, both behind the same nginx.

Not a test: a script you run by hand (Python 3 stdlib only).

    python3 benches/uwsgi_vs_postern.py                  # defaults: 5 rounds x 10 s, 16 conns
    python3 benches/uwsgi_vs_postern.py --rounds 3 --duration 5
    python3 benches/uwsgi_vs_postern.py --quiet-logs --tcp --format markdown
    python3 benches/uwsgi_vs_postern.py --postern-args="--threads 4" --uwsgi-args="--threads 4"

What it does:

1. `cargo build --release` (skip with --postern-bin PATH).
2. A venv with uWSGI from PyPI, cached in target/bench-venv, made with the same
   `python3` (so uWSGI embeds the same CPython that postern links against).
3. In a temp dir: postern (`--threads 1`) and uWSGI (`--master --processes 1
   --threads 1`), each on its own unix socket (or loopback TCP port with --tcp), each
   logging one line per request to a file (both off with --quiet-logs).
   uWSGI's master does not serve requests (it only supervises the worker), so one
   uWSGI worker runs the app, exactly like postern's one Python thread; the master is
   on because that is how uWSGI is deployed and it makes shutdown reliable
   (--no-master to drop it).
4. One private nginx (1 worker, access_log off) with two servers: one uwsgi_pass to
   each backend, both with `include /etc/nginx/uwsgi_params;`.
5. Checks that both answer 200 with the same body, warms each up, then runs
   interleaved rounds of `wrk --latency` (the order alternates every round).
6. Prints per-round results and a summary (median req/s, median p99, ratio
   postern/uWSGI, CPU time the backend used per request), and with
   --format markdown a block to paste into a README.

Everything it starts is stopped on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
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
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def die(msg: str) -> None:
    raise SystemExit(f"uwsgi_vs_postern: {msg}")


# --------------------------------------------------------------------------- processes


class Procs:
    """Every long-running child, each in its own process group (so a Ctrl-C in the
    terminal reaches only this script, which then stops them in order)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, cmd: list[str], *, stop_signal: int, log_path: Path,
              cwd: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log_path, "ab")
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 cwd=cwd, env=env, start_new_session=True)
        finally:
            out.close()
        self.items.append((name, p, stop_signal))
        return p

    def stop_all(self) -> None:
        # Reverse order: nginx first, then the backends.
        for name, p, sig in reversed(self.items):
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
            # Whatever is left in the child's own group (uWSGI workers, nginx workers).
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
    """pid and all its descendants (uWSGI master + workers, nginx master + worker)."""
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


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of the given processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# --------------------------------------------------------------------------- setup


def build_postern(args) -> Path:
    if args.postern_bin:
        p = Path(args.postern_bin).resolve()
        if not os.access(p, os.X_OK):
            die(f"--postern-bin {p} is not an executable file")
        return p
    log("== cargo build --release")
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


def uwsgi_venv(args) -> Path:
    """target/bench-venv with uWSGI, made with `python3` (or --python); reused while the
    base interpreter is the same one."""
    venv = Path(args.venv).resolve()
    python = shutil.which(args.python) or die(f"{args.python} not found on PATH")
    ident = python_identity(python)
    stamp = venv / ".bench-python"
    uwsgi = venv / "bin" / "uwsgi"
    if uwsgi.exists() and stamp.exists() and stamp.read_text().strip() == ident:
        log(f"== reusing {venv} (uWSGI for Python {ident})")
        return uwsgi
    log(f"== creating {venv} with {python} (Python {ident}) and pip install uwsgi")
    if venv.exists():
        shutil.rmtree(venv)
    run([python, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "-q", "uwsgi"])
    stamp.write_text(ident + "\n")
    return uwsgi


@dataclass
class App:
    postern: str          # the APP argument for postern
    uwsgi: list[str]      # the uWSGI options that load the same callable


def resolve_app(spec: str) -> App:
    path, _, callable_ = spec.partition(":")
    if path.endswith(".py"):
        p = Path(path)
        if not p.is_absolute():
            p = (Path.cwd() / p) if (Path.cwd() / p).exists() else (REPO / p)
        if not p.exists():
            die(f"--app {spec}: {p} does not exist")
        postern = str(p) + (f":{callable_}" if callable_ else "")
        uwsgi = ["--wsgi-file", str(p)] + (["--callable", callable_] if callable_ else [])
        return App(postern, uwsgi)
    # module[:callable], imported from the repo root (cwd of both servers).
    return App(spec, ["--pythonpath", str(REPO), "--module", spec])


def has_opt(extra: list[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in extra for n in names)


@dataclass
class Server:
    name: str
    cmd: list[str]
    addr: str              # what nginx's uwsgi_pass gets
    socket_path: Path | None
    tcp_port: int | None
    log_path: Path
    stop_signal: int
    proc: subprocess.Popen | None = None
    http_port: int = 0     # nginx front port for this backend
    shape: str = ""        # the options that set its concurrency, for the report


def make_servers(args, tmp: Path, postern_bin: Path, uwsgi_bin: Path, app: App):
    pextra = [a for s in args.postern_args for a in shlex.split(s)]
    uextra = [a for s in args.uwsgi_args for a in shlex.split(s)]

    def where(name):
        if args.tcp:
            port = free_port()
            return f"127.0.0.1:{port}", None, port
        path = tmp / f"{name}.sock"
        return f"unix:{path}", path, None

    # postern
    addr, spath, sport = where("postern")
    pcmd = [str(postern_bin), "--uwsgi", addr if spath is None else f"unix:{spath}"]
    if spath is not None:
        pcmd += ["--socket-mode", "666"]
    pshape = [] if has_opt(pextra, "--threads") else ["--threads", "1"]
    pcmd += pshape
    # The access log does not follow --log-level: --access-log off silences it.
    pcmd += ["--log-level", "warn", "--access-log", "off"] if args.quiet_logs else ["--log-level", "info"]
    pcmd += pextra + [app.postern]
    postern = Server("postern", pcmd, addr, spath, sport, tmp / "postern.log", signal.SIGTERM,
                     shape=shlex.join(pshape + pextra))

    # uWSGI
    addr, spath, sport = where("uwsgi")
    ucmd = [str(uwsgi_bin)]
    if not args.no_master:  # (without --master, uWSGI's default, the one process serves)
        # --die-on-term: in uWSGI 2.0 SIGTERM to the master means "reload"; make it "stop".
        ucmd += ["--master", "--die-on-term"]
    ucmd += ["--socket", str(spath) if spath is not None else addr.removeprefix("unix:")]
    if spath is not None:
        ucmd += ["--chmod-socket=666"]
    ushape = []
    if not has_opt(uextra, "--processes", "--workers", "-p"):
        ushape += ["--processes", "1"]
    if not has_opt(uextra, "--threads"):
        ushape += ["--threads", "1"]
    ucmd += ushape
    ucmd += ["--need-app", "--strict"]
    ucmd += app.uwsgi
    if args.quiet_logs:
        ucmd += ["--disable-logging"]
    ucmd += uextra
    uwsgi = Server("uWSGI", ucmd, addr, spath, sport, tmp / "uwsgi.log", signal.SIGTERM,
                   shape=shlex.join(([] if args.no_master else ["--master"]) + ushape + uextra))
    if args.no_master:
        uwsgi.stop_signal = signal.SIGINT
    return postern, uwsgi


def nginx_conf(tmp: Path, servers: list[Server]) -> str:
    blocks = []
    for s in servers:
        blocks.append(f"""
    server {{
        listen 127.0.0.1:{s.http_port};
        server_name {s.name.lower()}.bench;
        location / {{
            include {UWSGI_PARAMS};
            uwsgi_pass {s.addr};
        }}
    }}""")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# generated by benches/uwsgi_vs_postern.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
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
{''.join(blocks)}
}}
"""


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_backend(s: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            die(f"{s.name} exited with {s.proc.returncode} at start-up; {s.log_path}:\n"
                f"{tail(s.log_path)}")
        try:
            if s.socket_path is not None:
                with socket.socket(socket.AF_UNIX) as c:
                    c.connect(str(s.socket_path))
            else:
                socket.create_connection(("127.0.0.1", s.tcp_port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"{s.name} did not listen within {timeout:.0f}s; {s.log_path}:\n{tail(s.log_path)}")


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(port: int) -> tuple[int, bytes, dict]:
    try:
        with _opener.open(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_http(s: Server, nginx: subprocess.Popen, timeout: float = 30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if nginx.poll() is not None:
            die("nginx exited at start-up (see nginx.log / nginx-error.log in the temp dir)")
        try:
            status, body, headers = fetch(s.http_port)
            if status == 200:
                return status, body, headers
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    die(f"{s.name} via nginx (port {s.http_port}) never answered 200; last: {last}\n"
        f"{s.log_path}:\n{tail(s.log_path)}")


# --------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class Result:
    server: str
    round: int
    rps: float
    p50: float
    p99: float
    requests: int
    errors: int            # socket errors + non-2xx/3xx
    cpu_us_per_req: float  # backend CPU (all its processes/threads) per request
    nginx_cpu_us_per_req: float
    raw: str = field(repr=False, default="")


def parse_wrk(out: str) -> dict:
    m = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    if not m:
        raise ValueError("no Requests/sec in wrk output:\n" + out)
    lat = dict(re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    if "99" not in lat:
        raise ValueError("no latency distribution in wrk output (--latency):\n" + out)
    reqs = re.search(r"^\s*(\d+) requests in", out, re.M)
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        errors += sum(int(x) for x in se.groups())
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n2:
        errors += int(n2.group(1))
    return {"rps": float(m.group(1)), "p50": to_ms(lat["50"]), "p99": to_ms(lat["99"]),
            "requests": int(reqs.group(1)) if reqs else 0, "errors": errors}


class Wrk:
    def __init__(self, args):
        self.args = args
        self.current: subprocess.Popen | None = None

    def cmd(self, port: int, duration: float) -> list[str]:
        a = self.args
        return ["wrk", f"-t{a.wrk_threads}", f"-c{a.connections}", f"-d{duration:g}s",
                "--latency", f"http://127.0.0.1:{port}/"]

    def run(self, port: int, duration: float) -> str:
        self.current = subprocess.Popen(self.cmd(port, duration), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
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


def measure(wrk: Wrk, s: Server, nginx_pid: int, rnd: int, duration: float) -> Result:
    pids = process_tree(s.proc.pid)
    npids = process_tree(nginx_pid)
    c0, n0 = cpu_seconds(pids), cpu_seconds(npids)
    out = wrk.run(s.http_port, duration)
    c1, n1 = cpu_seconds(pids), cpu_seconds(npids)
    r = parse_wrk(out)
    n = max(r["requests"], 1)
    return Result(s.name, rnd, r["rps"], r["p50"], r["p99"], r["requests"], r["errors"],
                  (c1 - c0) * 1e6 / n, (n1 - n0) * 1e6 / n, out)


# --------------------------------------------------------------------------- report


def fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cols, widths)))


ROUND_HDR = ["round", "server", "req/s", "p50 ms", "p99 ms", "requests", "errors",
             "cpu us/req", "nginx us/req"]
ROUND_W = [5, 7, 10, 7, 7, 9, 6, 10, 12]


def round_line(r: Result) -> str:
    return fmt_row([r.round, r.server, f"{r.rps:,.0f}", f"{r.p50:.2f}", f"{r.p99:.2f}",
                    r.requests, r.errors, f"{r.cpu_us_per_req:.1f}",
                    f"{r.nginx_cpu_us_per_req:.1f}"], ROUND_W)


def summarize(results: list[Result]) -> dict:
    s = {}
    for name in ("postern", "uWSGI"):
        rs = [r for r in results if r.server == name]
        s[name] = {
            "rps": statistics.median(r.rps for r in rs),
            "rps_min": min(r.rps for r in rs),
            "rps_max": max(r.rps for r in rs),
            "p50": statistics.median(r.p50 for r in rs),
            "p99": statistics.median(r.p99 for r in rs),
            "cpu": statistics.median(r.cpu_us_per_req for r in rs),
            "errors": sum(r.errors for r in rs),
        }
    s["ratio"] = s["postern"]["rps"] / s["uWSGI"]["rps"]
    # Per-round ratios (each round runs both back to back, so they share the noise).
    rounds = sorted({r.round for r in results})
    per = []
    for k in rounds:
        p = next(r for r in results if r.round == k and r.server == "postern")
        u = next(r for r in results if r.round == k and r.server == "uWSGI")
        per.append(p.rps / u.rps)
    s["round_ratios"] = per
    return s


def markdown(args, s: dict, versions: dict, cmdline: str, shapes: dict) -> str:
    p, u = s["postern"], s["uWSGI"]
    logs = "off" if args.quiet_logs else "on (one line per request)"
    sock = "loopback TCP" if args.tcp else "unix sockets"
    lines = [
        f"| server | median req/s | median p99 (ms) | backend CPU µs/req |",
        f"|---|---:|---:|---:|",
        f"| postern {versions['postern']} (`{shapes['postern']}`) "
        f"| {p['rps']:,.0f} | {p['p99']:.2f} | {p['cpu']:.0f} |",
        f"| uWSGI {versions['uwsgi']} (`{shapes['uWSGI']}`) "
        f"| {u['rps']:,.0f} | {u['p99']:.2f} | {u['cpu']:.0f} |",
        "",
        f"postern/uWSGI req/s: **{s['ratio']:.2f}×** (median of {args.rounds} interleaved rounds; "
        f"per-round ratios {', '.join(f'{x:.2f}' for x in s['round_ratios'])}). "
        f"Both behind one nginx {versions['nginx']} worker over {sock}, request logging {logs}, "
        f"`wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s --latency`, "
        f"Python {versions['python']}, {os.cpu_count()} CPUs.",
        "",
        "```sh",
        cmdline,
        "```",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Compare postern and uWSGI behind the same nginx with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of wrk per server before round 1")
    ap.add_argument("--pause", type=float, default=1, help="seconds of idle between wrk runs")
    ap.add_argument("--app", default="examples/hello.py",
                    help="path/to/file.py[:callable] or module:callable")
    ap.add_argument("--postern-bin", help="use this postern binary instead of cargo build --release")
    ap.add_argument("--postern-args", action="append", default=[], metavar="ARGS",
                    help='extra postern arguments, shell-split; use the = form: --postern-args="--threads 4"')
    ap.add_argument("--uwsgi-args", action="append", default=[], metavar="ARGS",
                    help='extra uWSGI arguments, shell-split; e.g. --uwsgi-args="--processes 2 --threads 4"')
    ap.add_argument("--no-master", action="store_true",
                    help="run uWSGI without --master (one process that serves directly)")
    ap.add_argument("--quiet-logs", action="store_true",
                    help="no per-request logging: postern --log-level warn, uWSGI --disable-logging")
    ap.add_argument("--tcp", action="store_true", help="nginx -> backends over loopback TCP, not unix sockets")
    ap.add_argument("--fixed-order", action="store_true",
                    help="always postern first (default: alternate the order every round)")
    ap.add_argument("--format", choices=["text", "markdown"], default="text",
                    help="markdown: also print a block to paste into a README")
    ap.add_argument("--python", default="python3", help="interpreter for the uWSGI venv")
    ap.add_argument("--venv", default=str(REPO / "target" / "bench-venv"), help="uWSGI venv (cached)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, nginx.conf)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        ap.error("--rounds, --duration and --connections must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cmdline = shlex.join(["python3", os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
    for tool in ("wrk", NGINX):
        if not shutil.which(tool):
            die(f"{tool} not found")

    # SIGTERM/SIGHUP behave like Ctrl-C: unwind through the finally below.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    # Even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    postern_bin = build_postern(args)
    uwsgi_bin = uwsgi_venv(args)
    app = resolve_app(args.app)

    versions = {
        "postern": run([str(postern_bin), "-V"], capture_output=True, text=True).stdout.split("\n")[0].removeprefix("postern ").strip(),
        "postern_python": run([str(postern_bin), "-V"], capture_output=True, text=True).stdout.split("\n")[1].split()[1],
        "uwsgi": run([str(uwsgi_bin), "--version"], capture_output=True, text=True).stdout.strip(),
        "python": run([str(uwsgi_bin.parent / "python"), "-c", "import sys;print(sys.version.split()[0])"],
                      capture_output=True, text=True).stdout.strip(),
        "nginx": run([NGINX, "-v"], capture_output=True, text=True).stderr.strip().rpartition("/")[2],
        "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split() or ["?", "?"])[1],
    }
    if versions["postern_python"] != versions["python"]:
        log(f"WARNING: postern embeds Python {versions['postern_python']}, uWSGI's venv has {versions['python']}")

    tmp = Path(tempfile.mkdtemp(prefix="uwsgi-vs-postern-"))
    procs = Procs()
    wrk = Wrk(args)
    results: list[Result] = []
    try:
        postern, uwsgi = make_servers(args, tmp, postern_bin, uwsgi_bin, app)
        servers = [postern, uwsgi]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
        for s in servers:
            (tmp / f"{s.name.lower()}.cmd").write_text(shlex.join(s.cmd) + "\n")
            s.proc = procs.start(s.name, s.cmd, stop_signal=s.stop_signal, log_path=s.log_path,
                                 cwd=REPO, env=env)
        for s in servers:
            wait_backend(s)
        for s in servers:
            s.http_port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, servers))
        ncmd = [NGINX, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
        nginx = procs.start("nginx", ncmd, stop_signal=signal.SIGQUIT, log_path=tmp / "nginx.log", cwd=tmp)

        log("")
        log(f"== temp dir {tmp}")
        log(f"   postern {versions['postern']} (Python {versions['postern_python']}), uWSGI {versions['uwsgi']} "
            f"(Python {versions['python']}), nginx {versions['nginx']}, wrk {versions['wrk']}, "
            f"{os.cpu_count()} CPUs, load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        log(f"   postern: {shlex.join(postern.cmd)}")
        log(f"   uWSGI:   {shlex.join(uwsgi.cmd)}")
        log(f"   nginx:   {shlex.join(ncmd)}  (postern on :{postern.http_port}, uWSGI on :{uwsgi.http_port})")
        log(f"   wrk:     {shlex.join(wrk.cmd(0, args.duration)).replace(':0/', ':PORT/')}")
        log(f"   sockets: {'loopback TCP' if args.tcp else 'unix'}; per-request logging: "
            f"{'off' if args.quiet_logs else 'on'}")

        bodies = {}
        for s in servers:
            status, body, headers = wait_http(s, nginx)
            bodies[s.name] = body
            log(f"   {s.name} via nginx: {status}, {len(body)} bytes, {body[:60]!r}")
        if bodies["postern"] != bodies["uWSGI"]:
            die(f"the bodies differ: postern {bodies['postern'][:200]!r} vs uWSGI {bodies['uWSGI'][:200]!r}")

        if args.warmup > 0:
            log(f"\n== warm-up ({args.warmup:g} s each)")
            for s in servers:
                out = wrk.run(s.http_port, args.warmup)
                r = parse_wrk(out)
                log(f"   {s.name}: {r['rps']:,.0f} req/s, p99 {r['p99']:.2f} ms, errors {r['errors']}")

        log(f"\n== {args.rounds} round(s) x {args.duration:g} s, wrk -t{args.wrk_threads} -c{args.connections}"
            f" ({'fixed order' if args.fixed_order else 'order alternates per round'})")
        log(fmt_row(ROUND_HDR, ROUND_W))
        for k in range(1, args.rounds + 1):
            order = servers if args.fixed_order or k % 2 == 1 else servers[::-1]
            for s in order:
                time.sleep(args.pause)
                for other in servers:
                    if other.proc.poll() is not None:
                        die(f"{other.name} died (exit {other.proc.returncode}); {other.log_path}:\n{tail(other.log_path)}")
                r = measure(wrk, s, nginx.pid, k, args.duration)
                results.append(r)
                log(round_line(r))

        s = summarize(results)
        p, u = s["postern"], s["uWSGI"]
        log("\n== summary (medians over rounds)")
        hdr = ["server", "req/s", "min", "max", "p50 ms", "p99 ms", "cpu us/req", "errors"]
        w = [7, 10, 10, 10, 7, 7, 10, 6]
        log(fmt_row(hdr, w))
        for name, v in (("postern", p), ("uWSGI", u)):
            log(fmt_row([name, f"{v['rps']:,.0f}", f"{v['rps_min']:,.0f}", f"{v['rps_max']:,.0f}",
                         f"{v['p50']:.2f}", f"{v['p99']:.2f}", f"{v['cpu']:.1f}", v["errors"]], w))
        verdict = "postern faster" if s["ratio"] > 1 else "uWSGI faster"
        log(f"\nratio postern/uWSGI (median req/s): {s['ratio']:.3f}  ({verdict}; >1 means postern faster)")
        log(f"per-round ratios: {', '.join(f'{x:.3f}' for x in s['round_ratios'])}")
        cpu_ratio = f"{p['cpu'] / u['cpu']:.3f}" if u["cpu"] > 0 else "n/a"
        log(f"p99 postern/uWSGI: {p['p99'] / u['p99']:.3f}   "
            f"backend CPU per request postern/uWSGI: {cpu_ratio}")
        for sv in servers:
            try:
                n = sum(1 for _ in open(sv.log_path, "rb"))
            except OSError:
                n = 0
            log(f"{sv.name} log: {n} lines ({sv.log_path})")
        log(f"load avg at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        log(f"command: {cmdline}")
        if args.format == "markdown":
            log("\n== markdown\n")
            log(markdown(args, s, versions, cmdline, {sv.name: sv.shape for sv in servers}))
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted; stopping everything")
        if results:
            log("results so far:")
            for r in results:
                log(round_line(r))
        return 130
    finally:
        if wrk.current is not None and wrk.current.poll() is None:
            wrk.current.kill()
            wrk.current.wait()
        procs.stop_all()
        if args.keep_tmp:
            log(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
