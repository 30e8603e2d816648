"""The app of protocol-tests/tests/security.rs: it reports what a request could have
changed in the process (environ, working directory, environment, imported modules) and
what the process is allowed to do after --uid (a try at regaining root)."""

import json
import os
import sys


def report(environ):
    return {
        "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
        "url_scheme": environ["wsgi.url_scheme"],
        "body": environ["wsgi.input"].read().decode("latin-1"),
        "cwd": os.getcwd(),
        "os_environ": dict(os.environ),
        "evil_modules": sorted(m for m in sys.modules if "evil" in m),
        "sys_path": sys.path,
        "pid": os.getpid(),
        "app": "security_app",
    }


def try_regain_root():
    """Each way back to root the process has, and what it got."""
    out = {}
    for name, call in [
        ("setuid", lambda: os.setuid(0)),
        ("seteuid", lambda: os.seteuid(0)),
        ("setresuid", lambda: os.setresuid(0, 0, 0)),
        ("setgid", lambda: os.setgid(0)),
        ("setegid", lambda: os.setegid(0)),
        ("setgroups", lambda: os.setgroups([0])),
    ]:
        try:
            call()
            out[name] = "succeeded"
        except OSError as e:
            out[name] = "%s errno %d" % (type(e).__name__, e.errno)
    out["uid"] = [os.getuid(), os.geteuid()]
    out["gid"] = [os.getgid(), os.getegid()]
    out["groups"] = os.getgroups()
    out["pid"] = os.getpid()
    return out


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/regain-root":
        body = try_regain_root()
    else:
        body = report(environ)
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]
