"""hello, ASGI: the same response as hello.py (200, text/plain, a Content-Length, 14 bytes),
in one http.response.start and one http.response.body. The request body is not read (as
hello.py does not read wsgi.input). Lifespan events are acknowledged, so every server runs
the same app with lifespan on or auto."""

BODY = b"Hello, World!\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def application(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
