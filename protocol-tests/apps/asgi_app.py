"""A framework-free ASGI 3 app for the black-box tests (protocol-tests/tests/asgi_nginx.rs):
the standard library only, so it runs on any Python. Each route does one thing the tests
check from outside; what the app saw that the client cannot (an http.disconnect, how a
body arrived) it writes to a file under the directory in the query.

Routes (GET unless said):
    /env?…             JSON {"PATH_INFO", "QUERY_STRING"} from the scope (path, query),
                       as the WSGI test app's /env names them (the load of
                       protocol_tests::stack reads those two)
    POST /echo         the body back, X-Body-Len: its length
    POST /sha256       JSON {"size", "sha256", "messages", "empty_last"}: the body read
                       one http.request message at a time
    /gated-stream?n=&gate=
                       "chunk 0\\n", then nothing until the file `gate` exists, then
                       "chunk 1\\n".."chunk n-1\\n" (X-Accel-Buffering: no)
    /big?size=&chunk=  `size` bytes ("x"), `chunk` bytes per send (X-Accel-Buffering: no)
    /disconnect?dir=&name=&phase=before|during[&tick=SECONDS]
                       waits for http.disconnect and records it in dir/name: "before":
                       without answering; "during": after a first chunk of a streamed
                       answer (and, with tick, one more every SECONDS meanwhile). The
                       file says what receive() returned and what the next send() raised.
                       With listener=1 (sse-starlette's way) another task reads the
                       body and waits in receive() while the first chunk is sent.
    /ticks?dir=&name=&tick=SECONDS
                       "chunk 0\n", "chunk 1\n", … one every SECONDS (X-Accel-Buffering:
                       no), never calling receive(), until a send() raises: dir/name
                       then says which chunk's send raised ("raised at: N OSError-class")
    /state?tag=        JSON {"tag_before", "tag", "shared"}: scope["state"] as this
                       request found it, then set by it (lifespan startup stored
                       {"shared": [list]})
"""

import asyncio
import hashlib
import json
import os
import time
from urllib.parse import parse_qs


def query_of(scope):
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def answer(send, status, body, headers=()):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def json_answer(send, value):
    await answer(send, 200, json.dumps(value).encode(), [(b"content-type", b"application/json")])


async def start_stream(send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-accel-buffering", b"no")],
        }
    )


async def body_of(receive):
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away during the body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        if "state" in scope:
            scope["state"]["shared"] = []
        await lifespan(receive, send)
        return
    assert scope["type"] == "http", scope["type"]
    path, q = scope["path"], query_of(scope)

    if path == "/env":
        await json_answer(
            send, {"PATH_INFO": path, "QUERY_STRING": scope["query_string"].decode("latin-1")}
        )
    elif path == "/echo":
        body = await body_of(receive)
        await answer(send, 200, body, [(b"x-body-len", str(len(body)).encode())])
    elif path == "/sha256":
        digest, size, messages, last = hashlib.sha256(), 0, 0, None
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            messages += 1
            last = message.get("body", b"")
            size += len(last)
            digest.update(last)
            if not message.get("more_body", False):
                break
        await json_answer(
            send,
            {"size": size, "sha256": digest.hexdigest(), "messages": messages, "empty_last": last == b""},
        )
    elif path == "/gated-stream":
        gate, n = q["gate"], int(q.get("n", 4))
        await start_stream(send)
        await send({"type": "http.response.body", "body": b"chunk 0\n", "more_body": True})
        deadline = time.monotonic() + float(q.get("wait", 15))
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                await send({"type": "http.response.body", "body": b"the gate never opened\n"})
                return
            await asyncio.sleep(0.01)
        for i in range(1, n):
            await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size, chunk = int(q["size"]), int(q.get("chunk", 65536))
        block = b"x" * chunk
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        left = size
        while left > 0:
            piece = block if left >= chunk else block[:left]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
        if size == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/disconnect":
        record = os.path.join(q["dir"], q["name"])
        listener = None
        if q.get("listener"):
            # Runs at the first send() that waits (a write in flight): its receive()
            # for the disconnect starts while that write holds the connection.
            async def listen():
                await body_of(receive)
                return await receive()

            listener = asyncio.ensure_future(listen())
        else:
            await body_of(receive)
        if q.get("phase") == "during":
            await start_stream(send)
            await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
        ticker = None
        if q.get("tick"):
            # A chunk every `tick` seconds while waiting: a front end that watches the
            # client only when it writes to it (Apache) then notices it has gone.
            async def tick(every=float(q["tick"])):
                try:
                    while True:
                        await asyncio.sleep(every)
                        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                except OSError:
                    pass

            ticker = asyncio.ensure_future(tick())
        with open(record + ".arrived", "w"):
            pass
        started = time.monotonic()
        message = await (listener if listener is not None else receive())
        if ticker is not None:
            ticker.cancel()
        lines = [f"receive: {message['type']}", f"after: {time.monotonic() - started:.3f}"]
        # The next message the app would send: the start, or more of the body.
        if q.get("phase") == "during":
            late = {"type": "http.response.body", "body": b"too late\n", "more_body": True}
        else:
            late = {"type": "http.response.start", "status": 200, "headers": []}
        try:
            await send(late)
            lines.append("send: returned")
        except OSError as e:
            lines.append(f"send: OSError {type(e).__name__}")
        except Exception as e:
            lines.append(f"send: {type(e).__name__} {e}")
        with open(record + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(record + ".tmp", record)
    elif path == "/ticks":
        record = os.path.join(q["dir"], q["name"])
        await start_stream(send)
        i = 0
        try:
            while i < 1000:
                await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
                i += 1
                await asyncio.sleep(float(q.get("tick", 0.5)))
            line = "never raised"
        except OSError as e:
            line = f"raised at: {i} {type(e).__name__}"
        with open(record + ".tmp", "w") as f:
            f.write(line + "\n")
        os.rename(record + ".tmp", record)
    elif path == "/state":
        state = scope.get("state")
        if state is None:
            await json_answer(send, {"error": "no state in the scope"})
            return
        tag_before = state.get("tag")
        state["tag"] = q.get("tag", "")
        state["shared"].append(q.get("tag", ""))
        await asyncio.sleep(0.02)
        await json_answer(send, {"tag_before": tag_before, "tag": state["tag"], "shared": len(state["shared"])})
    else:
        await answer(send, 404, b"no such route\n", [(b"content-type", b"text/plain")])
