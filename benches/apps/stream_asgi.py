"""stream, ASGI: the same 100 chunks of 1 KiB as stream.py, no Content-Length (nginx sends
the response chunked): one http.response.body with more_body=True per chunk, sent as soon as
it is made (no sleep), then an empty last one."""

CHUNK = b"x" * 1023 + b"\n"
COUNT = 100
HEADERS = [(b"content-type", b"text/plain")]


async def application(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        for _ in range(COUNT):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
