"""upload, ASGI: echoes the request body (the bench POSTs 64 KiB) with a Content-Length, as
upload.py does: every http.request message is read until more_body is false."""


async def application(scope, receive, send):
    if scope["type"] == "http":
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
