"""A small Flask app exercising the parts of WSGI that matter behind nginx.

Run it (from the repository root, with Flask installed in the venv):

    postern --venv .venv --uwsgi unix:/run/postern.sock --socket-mode 666 examples/flask_app.py:app

and point nginx at the socket (see deploy/nginx/postern-uwsgi.conf).

Routes:
    GET  /            -> 200 text/plain "Hello from Flask\n"
    GET  /form        -> HTML form (field "name") posting to /form
    POST /form        -> 200 text/plain "Hello, {name}!\n"
    POST /upload      -> 200 JSON {"filename", "size", "sha256"} of the multipart field "file"
    GET  /redirect    -> 302 to /target
    GET  /target      -> 200 text/plain "You were redirected\n"
    GET  /set-cookie  -> 200, two Set-Cookie headers: a=1 and b=2 (path /)
    GET  /get-cookie  -> 200 JSON of the request's cookies
    GET  /stream      -> 5 streamed chunks "chunk 0\n".."chunk 4\n", X-Accel-Buffering: no
"""

import hashlib

from flask import Flask, Response, abort, jsonify, redirect, request, url_for

app = Flask(__name__)

FORM_PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>postern Flask form</title></head>
<body>
<form method="post" action="/form">
  <label>Name: <input type="text" name="name"></label>
  <button type="submit">Send</button>
</form>
</body>
</html>
"""


def text(body, status=200):
    return Response(body, status=status, mimetype="text/plain")


@app.get("/")
def index():
    return text("Hello from Flask\n")


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        name = request.form.get("name", "")
        return text(f"Hello, {name}!\n")
    return Response(FORM_PAGE, mimetype="text/html")


@app.post("/upload")
def upload():
    f = request.files.get("file")
    if f is None:
        abort(400, "multipart field 'file' is required")
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = f.stream.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
    return jsonify(filename=f.filename, size=size, sha256=digest.hexdigest())


@app.get("/redirect")
def go_redirect():
    return redirect(url_for("target"), code=302)


@app.get("/target")
def target():
    return text("You were redirected\n")


@app.get("/set-cookie")
def set_cookie():
    resp = text("cookies set\n")
    resp.set_cookie("a", "1", path="/")
    resp.set_cookie("b", "2", path="/")
    return resp


@app.get("/get-cookie")
def get_cookie():
    return jsonify(dict(request.cookies))


@app.get("/stream")
def stream():
    def generate():
        for i in range(5):
            yield f"chunk {i}\n"

    resp = Response(generate(), mimetype="text/plain")
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
