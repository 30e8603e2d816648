#!/usr/bin/env python3
"""RSS growth of a postern worker during a 1 GiB upload and a 1 GiB streamed response.

Starts postern (2 workers) on a Unix socket with a small app (the upload is read in
1 MiB pieces and counted; the response yields 1 MiB blocks), sends each request
straight to the socket (uwsgi or FastCGI, no front server), samples every worker's RSS
every 20 ms and prints the largest growth. PAUSE=3 makes the client wait 3 s before
reading the response: a server that buffers what the client has not taken yet shows it.

    python3 benches/big_bodies.py target/release/postern uwsgi
    PAUSE=3 python3 benches/big_bodies.py target/release/postern fastcgi

A script, not a test.
"""
import os, shutil, socket, struct, subprocess, sys, threading, time, tempfile, signal
BIN, PROTO = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "uwsgi"
APP_SOURCE = """\
BLOCK = b"x" * (1 << 20)

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/upload":
        inp = environ["wsgi.input"]
        n = 0
        while True:
            d = inp.read(1 << 20)
            if not d:
                break
            n += len(d)
        body = str(n).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        count = int(environ.get("QUERY_STRING") or 1024)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (BLOCK for _ in range(count))
    start_response("200 OK", [])
    return [b"ok"]
"""
GIB = 1 << 30

def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out

def rss(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096

def uwsgi_packet(vars_):
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in vars_)
    return bytes([0]) + struct.pack("<H", len(block)) + bytes([0]) + block

def fcgi_record(t, rid, content):
    return struct.pack(">BBHHBx", 1, t, rid, len(content), 0) + content

def fcgi_params(vars_):
    out = b""
    for k, v in vars_:
        for n in (len(k), len(v)):
            out += bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
        out += k + v
    return out

def vars_for(method, path, query, length):
    v = [(b"REQUEST_METHOD", method), (b"PATH_INFO", path), (b"QUERY_STRING", query),
         (b"SERVER_NAME", b"t"), (b"SERVER_PORT", b"80"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
    if length is not None:
        v.append((b"CONTENT_LENGTH", str(length).encode()))
    return v

def run(sock_path, method, path, query, body_len):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    v = vars_for(method, path, query, body_len)
    chunk = b"y" * (1 << 20)
    if PROTO == "uwsgi":
        s.sendall(uwsgi_packet(v))
        def send():
            left = body_len or 0
            while left:
                n = min(left, len(chunk)); s.sendall(chunk[:n]); left -= n
    else:
        s.sendall(fcgi_record(1, 1, struct.pack(">HB5x", 1, 0)) + fcgi_record(4, 1, fcgi_params(v)) + fcgi_record(4, 1, b""))
        def send():
            left = body_len or 0
            piece = chunk[:65535]
            while left:
                n = min(left, len(piece)); s.sendall(fcgi_record(5, 1, piece[:n])); left -= n
            s.sendall(fcgi_record(5, 1, b""))
    t = threading.Thread(target=send); t.start()
    got = 0
    head = b""
    if os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        if len(head) < 200:
            head += d[:200]
        got += len(d)
    t.join(); s.close()
    return got, head

def main():
    tmp = tempfile.mkdtemp(prefix="postern-big-")
    sock = os.path.join(tmp, "s.sock")
    APP = os.path.join(tmp, "bigapp.py")
    with open(APP, "w") as f:
        f.write(APP_SOURCE)
    p = subprocess.Popen([BIN, APP, f"--{PROTO}", "unix:" + sock, "--workers", "2", "--log-level", "warn",
                          "--access-log", "off"] + sys.argv[3:], start_new_session=True)
    try:
        for _ in range(100):
            if os.path.exists(sock) and len(children(p.pid)) >= 2:
                break
            time.sleep(0.1)
        time.sleep(1)
        for name, args in [("upload 1 GiB", (b"POST", b"/upload", b"", GIB)),
                           ("stream 1 GiB (1 MiB blocks)", (b"GET", b"/stream", b"1024", None))]:
            ws = children(p.pid)
            base = {w: rss(w) for w in ws}
            peak = dict(base)
            done = [False]
            def sample():
                while not done[0]:
                    for w in ws:
                        try:
                            peak[w] = max(peak[w], rss(w))
                        except OSError:
                            pass
                    time.sleep(0.02)
            th = threading.Thread(target=sample); th.start()
            t0 = time.time()
            got, head = run(sock, *args)
            ok = b"200 OK" in head and (args[3] is None or str(args[3]).encode() in head)
            done[0] = True; th.join()
            growth = max(peak[w] - base[w] for w in ws)
            print(f"{PROTO} {name}: {'200' if ok else 'FAILED'}, {got} bytes back in {time.time()-t0:.1f}s; worker RSS "
                  f"{max(base.values())/2**20:.1f} MiB, max growth {growth/2**20:.1f} MiB")
    finally:
        p.send_signal(signal.SIGTERM); p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
