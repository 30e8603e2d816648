"""A small Flask app exercising the parts of WSGI that matter behind nginx.

Run it (from the repository root, with Flask installed in the venv):

    postern --venv .venv --uwsgi unix:/run/postern.sock --socket-mode 666 examples/flask_app.py:app

and point nginx at the socket (see deploy/nginx/postern-uwsgi.conf).

Routes:
    GET  /            -> 200 text/plain "Hello from Flask\n"
    GET  /form        -> HTML form (field "name") posting to /form
    POST /form        -> 200 text/plain "Hello, {name}!\n"
    GET  /upload      -> HTML upload form (multipart/form-data: "file", "description")
    POST /upload      -> 200 JSON {"filename", "size", "sha256", "description"} of the
                         multipart field "file" (400 JSON error without it)
    GET  /api/items   -> 200 JSON {"items": [...]}
    POST /api/items   -> 201 JSON item {"id", "name", "price"} from a JSON body
                         {"name": str, "price": number}, Location: /api/items/<id>;
                         400 JSON error for a bad body, 415 if it is not JSON
    GET  /api/items/<id> -> 200 JSON item, or 404 JSON error
    GET  /redirect    -> 302 to /target
    GET  /target      -> 200 text/plain "You were redirected\n"
    GET  /set-cookie  -> 200, two Set-Cookie headers: a=1 and b=2 (path /)
    GET  /get-cookie  -> 200 JSON of the request's cookies
    GET  /stream      -> 5 streamed chunks "chunk 0\n".."chunk 4\n", X-Accel-Buffering: no
"""

import hashlib
import itertools
import json
import threading

from flask import Flask, Response, jsonify, redirect, request, url_for
from werkzeug.exceptions import HTTPException

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


UPLOAD_PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>postern Flask upload</title></head>
<body>
<form method="post" action="/upload" enctype="multipart/form-data">
  <label>File: <input type="file" name="file"></label>
  <label>Description: <input type="text" name="description"></label>
  <button type="submit">Upload</button>
</form>
</body>
</html>
"""


def text(body, status=200):
    return Response(body, status=status, mimetype="text/plain")


def json_error(status, message):
    return jsonify(error=message), status


@app.get("/")
def index():
    return text("Hello from Flask\n")


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        name = request.form.get("name", "")
        return text(f"Hello, {name}!\n")
    return Response(FORM_PAGE, mimetype="text/html")


@app.route("/upload", methods=["GET", "POST"])
def upload():
    if request.method == "GET":
        return Response(UPLOAD_PAGE, mimetype="text/html")
    f = request.files.get("file")
    if f is None:
        return json_error(400, "multipart field 'file' is required")
    # Read in blocks: a large upload never sits in memory twice (postern has already
    # spooled a body over --body-spool-threshold to a temporary file).
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = f.stream.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
    return jsonify(
        filename=f.filename,
        size=size,
        sha256=digest.hexdigest(),
        description=request.form.get("description", ""),
    )


# A JSON API over an in-memory store. Each worker process has its own copy (with
# --workers > 1 they differ): a real app keeps its data in a database. The lock is
# needed with --threads > 1, where requests run concurrently in one process.
ITEMS = {}
ITEMS_LOCK = threading.Lock()
NEXT_ID = itertools.count(1)


@app.get("/api/items")
def list_items():
    with ITEMS_LOCK:
        items = [ITEMS[k] for k in sorted(ITEMS)]
    return jsonify(items=items)


@app.post("/api/items")
def create_item():
    if not request.is_json:
        return json_error(415, "send the item as JSON (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return json_error(400, "the body must be a JSON object")
    name, price = data.get("name"), data.get("price")
    if not isinstance(name, str) or not name:
        return json_error(400, "'name' must be a non-empty string")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        return json_error(400, "'price' must be a number")
    with ITEMS_LOCK:
        item = {"id": next(NEXT_ID), "name": name, "price": price}
        ITEMS[item["id"]] = item
    resp = jsonify(item)
    resp.status_code = 201
    resp.headers["Location"] = url_for("get_item", item_id=item["id"])
    return resp


@app.get("/api/items/<int:item_id>")
def get_item(item_id):
    with ITEMS_LOCK:
        item = ITEMS.get(item_id)
    if item is None:
        return json_error(404, f"no item {item_id}")
    return jsonify(item)


@app.errorhandler(HTTPException)
def api_errors_as_json(e):
    # Under /api/, errors Flask raises itself (unknown route, wrong method) are JSON
    # too; elsewhere they keep Flask's HTML page.
    if not request.path.startswith("/api/"):
        return e
    resp = e.get_response()  # keeps headers such as a 405's Allow
    resp.data = json.dumps({"error": e.description})
    resp.content_type = "application/json"
    return resp


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
