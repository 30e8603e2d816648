"""flask: a Flask JSON endpoint (routing, request context, jsonify): a framework's cost.
Any path answers with the same JSON document."""

from flask import Flask, jsonify

app = Flask(__name__)
ITEMS = [{"id": i, "name": f"item {i}", "price": round(i * 1.25, 2)} for i in range(10)]


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def items(path):
    return jsonify(items=ITEMS, count=len(ITEMS))


application = app
