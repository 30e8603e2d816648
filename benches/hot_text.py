#!/usr/bin/env python3
"""Writes src/hot-text.ld: the functions of postern's binary that a server runs, laid out
together at the start of its code, so the pages the processes map are few.

Why: a process maps a file's pages around each page it touches (fault-around, 64 KiB
windows), and the functions a server runs (start-up, a worker's start, a request on each
protocol, logging, a stop: about 1.4 MB) were spread over the whole 4.6 MB of code between
the ones it never runs (the other subcommands, config translation, the stats endpoint,
panics and errors), so nearly every window was touched and nearly the whole text counted
in the PSS of master + workers (4.15 MiB of it mapped at 4e1c017, 1.6 after).

How: runs the release binary under `valgrind --tool=callgrind --trace-children=yes`
(master and workers, start-up included) with the apps of benches/apps/, sends requests
over uwsgi, FastCGI (a connection per request and kept connections), SCGI, serially and
concurrently, with and without the access log, WSGI and ASGI, stops it with SIGTERM, and
lists every function of the binary that ran (callgrind's `fn=` entries for its object).
The list becomes a linker script (build.rs passes it to release links only) that puts
those functions' sections (`-ffunction-sections`: `.text.<symbol>`, or
`.text.unlikely.<symbol>` for what LLVM finds cold, `main` included) first in `.text`,
those any WSGI run ran before those only ASGI ran, the ones more runs ran first. First come the exact symbols, then the same names
with what changes from build to build a wildcard (the hash; in v0 names the crate
disambiguators and back-references): the exact ones are valid while the toolchain,
Cargo.lock and the release profile give the same hashes (a profile change moves every
hash), the wildcards across builds, but one name can stand for several generic instances
(`<&T as Debug>::fmt`): the ones that ran come first either way, the others after them.
A function that is new or renamed since the script was written keeps its default place
(correct, only a window more to map): rerun this script after changes to what runs per
request or at start-up, and after a change of the release profile or the toolchain.
(The section stays `.text`: valgrind only reads the symbols of `.text`.)

    python3 benches/hot_text.py                          # cargo build --release first
    python3 benches/hot_text.py --postern-bin BIN --out src/hot-text.ld

Needs valgrind. Takes a few minutes (everything runs under callgrind). A script, not a test.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instructions import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "benches" / "apps"

# (app, extra arguments, what to send): each run is one server under callgrind.
RUNS = [
    ("hello.py", ["--log-level", "info", "--venv", "{venv}"], ["uwsgi", "fcgi", "fcgi-keep", "scgi"]),
    ("hello.py", ["--threads", "4", "--log-level", "warn", "--access-log", "off", "--venv", "{venv}"],
     ["uwsgi", "fcgi", "fcgi-keep"]),
    ("hello.py", ["--log-level", "warn", "--access-log", "off"], ["uwsgi", "fcgi", "fcgi-keep"]),
    ("upload.py", ["--log-level", "warn", "--access-log", "off"], ["uwsgi", "fcgi", "fcgi-keep"]),
    ("stream.py", ["--log-level", "warn", "--access-log", "off"], ["uwsgi", "fcgi-keep"]),
    ("hello_asgi.py", ["--interface", "asgi", "--log-level", "info"], ["uwsgi", "fcgi", "fcgi-keep"]),
    ("stream_asgi.py", ["--interface", "asgi", "--log-level", "warn", "--access-log", "off"],
     ["uwsgi", "fcgi-keep"]),
    ("upload_asgi.py", ["--interface", "asgi", "--log-level", "warn", "--access-log", "off"],
     ["uwsgi", "fcgi-keep"]),
]


def scgi_request() -> bytes:
    pairs = [("CONTENT_LENGTH", "0"), ("SCGI", "1"), ("REQUEST_METHOD", "GET"), ("PATH_INFO", "/"),
             ("QUERY_STRING", ""), ("SERVER_NAME", "bench"), ("SERVER_PORT", "80"),
             ("SERVER_PROTOCOL", "HTTP/1.1"), ("HTTP_HOST", "127.0.0.1")]
    head = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return str(len(head)).encode() + b":" + head + b","


def scgi_one(path: str) -> None:
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(scgi_request())
        out = b""
        while d := s.recv(65536):
            out += d
    if b"200" not in out[:64]:
        raise SystemExit(f"hot_text: unexpected SCGI answer {out[:100]!r}")


def send(kind: str, socks: dict, n: int, body: bytes) -> None:
    if kind == "scgi":
        for _ in range(n):
            scgi_one(socks["scgi"])
        return
    c = Client(Path(socks["uwsgi" if kind == "uwsgi" else "fastcgi"]), kind, body)
    try:
        c.run(n)
    finally:
        c.close()


def run(binary: str, app: str, extra: list, kinds: list, work: Path, n: int) -> list:
    tag = f"{len(list(work.glob('run*')))}"
    if not (work / "venv").exists():
        subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")])
    d = work / f"run{tag}"
    d.mkdir()
    socks = {p: str(d / f"{p}.sock") for p in ("uwsgi", "fastcgi", "scgi")}
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--demangle=no",
           "--dump-instr=no", f"--callgrind-out-file={d}/cg.%p", binary, str(APPS / app),
           "--workers", "2",
           "--uwsgi", "unix:" + socks["uwsgi"], "--fastcgi", "unix:" + socks["fastcgi"]]
    if "scgi" in kinds:
        cmd += ["--scgi", "unix:" + socks["scgi"]]
    log = open(d / "server.log", "w")
    extra = [x.replace("{venv}", str(work / "venv")) for x in extra]
    p = subprocess.Popen(cmd + extra, stdout=log, stderr=log, start_new_session=True)
    body = b"x" * 65536 if app.startswith("upload") else b""
    try:
        deadline = time.time() + 300
        while True:
            try:
                send(kinds[0], socks, 1, body)
                break
            except (OSError, SystemExit):
                if time.time() > deadline or p.poll() is not None:
                    raise SystemExit(f"hot_text: the server did not start; see {d}/server.log")
                time.sleep(1)
        # Idle a while first: what the workers' timers run (heartbeats, the runtime's
        # parking with a timeout) counts as much as a request.
        time.sleep(3)
        for kind in kinds:
            send(kind, socks, n, body)
            # Concurrent clients: both workers serve, connections wait in the epoll.
            ts = [threading.Thread(target=send, args=(kind, socks, n, body)) for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return list(d.glob("cg.*"))


def functions(dumps: list, binary: str) -> set:
    """Names of the functions of `binary`'s object that have a cost in any dump."""
    names = set()
    real = os.path.realpath(binary)
    for dump in dumps:
        obs, fns, ob = {}, {}, None
        with open(dump, errors="replace") as f:
            for line in f:
                if line.startswith(("ob=", "cob=")):
                    # A name is given once, where its id first appears (ob= or cob=).
                    m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                    if m.group(2) is not None:
                        obs[m.group(1)] = m.group(2)
                    if line.startswith("ob="):
                        ob = m.group(1)
                elif line.startswith(("fn=", "cfn=")):
                    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                    if m.group(2) is not None:
                        fns[m.group(1)] = m.group(2)
                    # cfn: a callee, possibly in another object; only fn= entries (a
                    # function with a cost of its own) of our object count.
                    if line.startswith("fn=") and ob in obs and os.path.realpath(obs[ob]) == real:
                        names.add(fns[m.group(1)])
    return names


HASH = re.compile(r"17h[0-9a-f]{16}E(\.llvm\.\d+)?$")


def pattern(name: str) -> str | None:
    """The input-section pattern for a symbol, with what changes from build to build a
    wildcard: legacy-mangled Rust symbols end in a hash (`17h<16 hex>E`, plus `.llvm.N`
    for a symbol LTO made local); v0-mangled ones (the standard library's) carry crate
    disambiguators (`Cs<base62>_`) and back-references (`B<base62>_`) whose values move
    with them. The path and the generic arguments stay."""
    name = re.sub(r"'\d+$", "", name)  # callgrind's recursion depth (name'2)
    if name.startswith("0x") or not re.fullmatch(r"[A-Za-z0-9_$.]+", name):
        return None
    if HASH.search(name):
        name = HASH.sub("17h*", name)
    elif name.startswith("_R"):
        name = re.sub(r"(Cs|B)[0-9A-Za-z]*_", r"\1*_", name)
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern-bin", help="a release binary (default: `cargo build --release`, "
                    "then the one in $CARGO_TARGET_DIR or target/)")
    ap.add_argument("--out", default=str(ROOT / "src" / "hot-text.ld"))
    ap.add_argument("--requests", type=int, default=50, help="per protocol and client (default 50)")
    a = ap.parse_args()
    if a.postern_bin is None:
        subprocess.check_call(["cargo", "build", "--release"], cwd=ROOT)
        target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
        a.postern_bin = str((target if target.is_absolute() else ROOT / target) / "release" / "postern")
    with tempfile.TemporaryDirectory(prefix="postern-hot-") as tmp:
        work = Path(tmp)
        # Where each function ran: a function any WSGI run ran comes before the ones
        # only ASGI ran, so a WSGI server maps none of the latter's windows; within each
        # group, the ones more runs ran first (what runs only now and then, a timer's or
        # a contended lock's path, ends up next to its kind rather than after the rest).
        seen = {}
        for app, extra, kinds in RUNS:
            t0 = time.time()
            dumps = run(a.postern_bin, app, extra, kinds, work, a.requests)
            got = functions(dumps, a.postern_bin)
            print(f"  {app} {' '.join(extra[:4])}: {len(got)} functions ({len(got - seen.keys())} new), "
                  f"{time.time() - t0:.0f} s", file=sys.stderr)
            for n in got:
                seen.setdefault(n, []).append("asgi" in extra)
    names = sorted(seen, key=lambda n: (all(seen[n]), -len(seen[n]), n))
    exact, pats = [], []
    for n in names:
        n = re.sub(r"'\d+$", "", n)  # callgrind's recursion depth (name'2)
        if re.fullmatch(r"[A-Za-z0-9_$.]+", n) and not n.startswith("0x") and n not in exact:
            exact.append(n)
        p = pattern(n)
        if p and p not in pats:
            pats.append(p)
    if not names:
        # A binary whose symbols valgrind cannot read (linked by GNU ld with a script: two
        # .text sections) lists nothing: keep the script there is.
        raise SystemExit(f"hot_text: no function of {a.postern_bin} was seen running (symbols unreadable?); {a.out} left as it was")
    with open(a.out, "w") as f:
        f.write("/* Generated by benches/hot_text.py: the functions postern runs (start-up, a worker,\n"
                "   requests on every protocol, WSGI and ASGI, logs, a stop), laid out together at\n"
                "   the start of .text so the processes map fewer pages of it. Passed to release\n"
                "   links by build.rs. Regenerate: python3 benches/hot_text.py\n"
                "   First the exact symbols (valid while the toolchain, Cargo.lock and the release\n"
                "   profile give the same hashes), then the same names with the hash a wildcard\n"
                "   (valid across builds, but a name can stand for several generic instances:\n"
                "   the ones that did not run come after the ones that did). A section goes to\n"
                "   the first line that matches it; what matches none keeps its default place. */\n"
                "SECTIONS\n{\n  .text :\n  {\n")
        # LLVM puts the functions it finds cold in `.text.unlikely.<symbol>`.
        for p in exact + pats:
            f.write(f"    *(.text.{p} .text.unlikely.{p})\n")
        f.write("  }\n}\nINSERT BEFORE .init;\n")
    print(f"{len(names)} functions, {len(pats)} patterns -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
