"""big, ASGI: the same 1 MiB response as big.py, one body message with a Content-Length
(built once at import)."""

BODY = bytes(range(256)) * 4096
HEADERS = [(b"content-type", b"application/octet-stream"),
           (b"content-length", str(len(BODY)).encode())]


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
