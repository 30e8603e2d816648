"""A Starlette app with lifespan state: a connection pool made at start-up, shared by
every request, closed at shutdown.

Run it (from the repository root, with the venv of examples/requirements.txt):

    postern examples/starlette_app.py:app --venv .venv --uwsgi unix:/run/postern/starlette.sock --socket-mode 666

Each worker process runs the lifespan once: `startup` before it serves its first
request (postern reports the worker ready only after it), `shutdown` after its last
request when it stops. What the lifespan function yields becomes the worker's state;
every request gets a shallow copy of it as `request.state`: the objects in it (the pool)
are shared, while a value a request sets on `request.state` stays with that request.

Routes:
    GET /             -> 200 text/plain "Hello from Starlette\\n"
    GET /query?sql=…  -> 200 JSON {"connection", "result", "queries"}: one query on a
                         connection borrowed from the pool (and given back)
    GET /state?tag=…  -> 200 JSON {"tag_before", "tag", "pool_size", "worker_pid"}: the
                         tag this request found in request.state before setting its own
                         (always null: state set by one request never reaches another)
    GET /pool         -> 200 JSON {"size", "free", "queries", "closed"}
"""

import asyncio
import contextlib
import os
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


def log(message):
    # stderr: postern leaves it to whoever started it, next to its own log.
    print(f"starlette example [{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Connection:
    """Stands in for a database connection (no database is needed to run the example)."""

    def __init__(self, number):
        self.number = number

    async def execute(self, sql):
        await asyncio.sleep(0)  # a real driver waits for the database here
        return f"{sql!r} ran on connection {self.number}"


class Pool:
    """A fixed-size pool: `async with pool.connection() as conn` borrows one, waiting
    while all are in use."""

    def __init__(self, size):
        self.size = size
        self.queries = 0
        self.closed = False
        self._free = asyncio.Queue()
        for number in range(1, size + 1):
            self._free.put_nowait(Connection(number))

    @contextlib.asynccontextmanager
    async def connection(self):
        if self.closed:
            raise RuntimeError("the pool is closed")
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self.queries += 1
            self._free.put_nowait(conn)

    def free(self):
        return self._free.qsize()

    async def close(self):
        self.closed = True


@contextlib.asynccontextmanager
async def lifespan(app):
    pool = Pool(size=4)
    log(f"startup: pool of {pool.size} connections opened")
    # Yielded state: each request's scope["state"] is a shallow copy of this dict.
    yield {"pool": pool}
    await pool.close()
    log(f"shutdown: pool closed after {pool.queries} queries")


async def hello(request):
    return PlainTextResponse("Hello from Starlette\n")


async def query(request):
    pool = request.state.pool
    async with pool.connection() as conn:
        result = await conn.execute(request.query_params.get("sql", "select 1"))
    return JSONResponse({"connection": conn.number, "result": result, "queries": pool.queries})


async def state(request: Request):
    # None on every request: this dict is this request's own copy of the state.
    tag_before = getattr(request.state, "tag", None)
    request.state.tag = request.query_params.get("tag", "")
    await asyncio.sleep(0.05)  # let other requests run (and set their own tags) meanwhile
    return JSONResponse(
        {
            "tag_before": tag_before,
            "tag": request.state.tag,
            "pool_size": request.state.pool.size,
            "worker_pid": os.getpid(),
        }
    )


async def pool_status(request):
    pool = request.state.pool
    return JSONResponse(
        {"size": pool.size, "free": pool.free(), "queries": pool.queries, "closed": pool.closed}
    )


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/query", query),
        Route("/state", state),
        Route("/pool", pool_status),
    ],
    lifespan=lifespan,
)
