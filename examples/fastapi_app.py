"""A small FastAPI app: the parts of ASGI that matter behind nginx.

Run it (from the repository root, with the venv of examples/requirements.txt):

    postern examples/fastapi_app.py:app --venv .venv --uwsgi unix:/run/postern/fastapi.sock --socket-mode 666

postern sees that `app` is an ASGI app (FastAPI's `__call__` is a coroutine function)
and serves it on an asyncio event loop; `--interface asgi` says so explicitly. Point
nginx at the socket (README, "ASGI apps").

Routes:
    GET  /                -> 200 JSON {"hello": "FastAPI"}
    GET  /api/items       -> 200 JSON {"items": [...]}
    POST /api/items       -> 201 JSON item {"id", "name", "price"} from a JSON body
                             {"name": str, "price": number}; 422 (FastAPI's validation
                             error) for a bad body
    GET  /api/items/{id}  -> 200 JSON item, or 404 JSON {"detail": ...}
    POST /upload          -> 200 JSON {"filename", "size", "sha256"} of the multipart
                             file field "file", read in 64 KiB pieces
    POST /sha256          -> 200 JSON {"size", "sha256"} of the raw request body, read
                             as it arrives (`request.stream()`: one `http.request`
                             message at a time, never the whole body in memory)
    GET  /stream?n=5&delay=0.2&size=0
                          -> n chunks "chunk {i}\\n" (or, with size > 0, n chunks of
                             `size` bytes each), delay seconds apart,
                             X-Accel-Buffering: no (nginx passes each chunk on at once)
    GET  /events?n=5&delay=0.5
                          -> server-sent events ("id: i", "data: {json}"), text/event-
                             stream, X-Accel-Buffering: no; stops early, and says so
                             on stderr, when the client goes away (http.disconnect)
"""

import asyncio
import hashlib
import json
import sys
import time

from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI(title="postern FastAPI example")

# nginx buffers an upstream response unless told otherwise; a stream must reach the
# client as it is produced: this header switches buffering off for one response.
UNBUFFERED = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}


class NewItem(BaseModel):
    name: str
    price: float


# In memory, so each worker process has its own (a real app uses a database).
items: dict[int, dict] = {}


@app.get("/")
async def hello():
    return {"hello": "FastAPI"}


@app.get("/api/items")
async def list_items():
    return {"items": list(items.values())}


@app.post("/api/items", status_code=201)
async def create_item(item: NewItem):
    new_id = max(items, default=0) + 1
    items[new_id] = {"id": new_id, "name": item.name, "price": item.price}
    return items[new_id]


@app.get("/api/items/{item_id}")
async def get_item(item_id: int):
    if item_id not in items:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return items[item_id]


@app.post("/upload")
async def upload(file: UploadFile):
    # python-multipart spools the file to disk past 1 MiB; read it back in pieces.
    digest = hashlib.sha256()
    size = 0
    while piece := await file.read(64 * 1024):
        size += len(piece)
        digest.update(piece)
    return {"filename": file.filename, "size": size, "sha256": digest.hexdigest()}


@app.post("/sha256")
async def sha256(request: Request):
    digest = hashlib.sha256()
    size = 0
    async for piece in request.stream():
        size += len(piece)
        digest.update(piece)
    return {"size": size, "sha256": digest.hexdigest()}


@app.get("/stream")
async def stream(n: int = 5, delay: float = 0.2, size: int = 0):
    n, delay = max(0, n), max(0.0, delay)
    block = b"x" * size if size > 0 else None

    async def chunks():
        for i in range(n):
            if i and delay:
                await asyncio.sleep(delay)
            yield block if block is not None else f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain", headers=UNBUFFERED)


@app.get("/events")
async def events(request: Request, n: int = 5, delay: float = 0.5):
    n, delay = max(0, n), max(0.0, delay)

    async def stream():
        sent = 0
        try:
            for i in range(n):
                if i and delay:
                    await asyncio.sleep(delay)
                # The usual SSE loop: stop producing once the client has gone (the
                # server delivered http.disconnect).
                if await request.is_disconnected():
                    return
                data = json.dumps({"n": i, "time": time.time()})
                yield f"id: {i}\ndata: {data}\n\n"
                sent += 1
        finally:
            # Also reached when the server cancels the stream or a send fails.
            if sent < n:
                print(f"events: the client went away after {sent} of {n} events", file=sys.stderr, flush=True)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=UNBUFFERED)
