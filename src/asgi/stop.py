# The end of a worker's event loop and its error reports (src/asgi/stop.rs). Run on
# the loop thread ("python-asgi") only, but for `_serve`, which the stack dump's thread
# also calls (src/asgi/dump.rs), holding the GIL while the loop is blocked: it only
# reads.
import asyncio
import os
import threading
import traceback

from _postern_lifespan import run

# The names of postern's own tasks start with this.
OWN = "postern: "
# The name lifespan.py gives a lifespan task that did not end when cancelled.
LIFESPAN_LEFT = OWN + "lifespan task left running"
# How long the cut-off waits, once the tasks have ended or had their grace, for the
# writes of their responses still on an executor thread (cut, they come back at once):
# within the slack the loop promises beyond the grace (stop.rs).
WRITES_BACK = 0.1


def _task_name(task):
    """A request's task runs serve.rs's wrapper of the app's coroutine: named after its
    request (as the --timeout dump names it); else the task's name."""
    name = task.get_name()
    try:
        return _serve(task)._postern_exchange._describe()
    except Exception:
        return name


def _is_serve(c):
    return type(c).__qualname__ == "serve" and hasattr(type(c), "_postern_exchange")


def _serve(task):
    """The request `task` runs (serve.rs's wrapper of the app's coroutine): its
    coroutine, or, through a task factory that wraps each coroutine (sentry_sdk's
    does), what the wrapper awaits, down the chain of awaits (a wrapper not started
    yet holds it in a local); None for any other task. Not by the task's name: a
    factory may give a request's name to the tasks the app starts from it."""
    c = task.get_coro()
    for _ in range(8):
        if c is None:
            return None
        if _is_serve(c):
            return c
        inner = getattr(c, "cr_await", None)
        if inner is None:
            frame = getattr(c, "cr_frame", None)
            if frame is not None:
                inner = next((v for v in frame.f_locals.values() if _is_serve(v)), None)
        c = inner
    return None


def _is_request(task):
    return _serve(task) is not None


def _text(value, show=str):
    """`value` as text that is valid UTF-8 (a lone surrogate, as surrogateescape
    leaves in a path, becomes a backslash escape): a report must never be lost to
    the way one of its parts prints."""
    try:
        text = show(value)
        if not isinstance(text, str):
            text = object.__repr__(text)
    except Exception as e:  # a __str__/__repr__ that raises
        try:
            text = f"<cannot show: {type(e).__name__}: {e}>"
        except Exception:
            text = f"<cannot show: {type(e).__name__}>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(context):
    """What the default exception handler would log, as (message, task, details,
    traceback): the context's other keys as `key: repr(value)` lines, the traceback of
    its exception, and the name of the task it is about (if any). Whatever the
    context holds (a message that is not text, keys that are not, not a dict at all),
    every part is text that is valid UTF-8."""
    if not isinstance(context, dict):
        return (
            "Unhandled exception in event loop (the exception handler was called "
            "with something other than a dict)",
            None,
            f"context: {_text(context, repr)}",
            None,
        )
    message = _text(context.get("message") or "Unhandled exception in event loop")
    exception = context.get("exception")
    task = None
    for key in ("task", "future"):
        fut = context.get(key)
        if isinstance(fut, asyncio.Task):
            task = _text(_task_name(fut))
            break
    lines = []
    for key in sorted(context, key=lambda k: _text(k)):
        if key in ("message", "exception"):
            continue
        if key in ("source_traceback", "handle_traceback"):
            value = _text(context[key], lambda v: "".join(traceback.format_list(v)).rstrip())
        else:
            value = _text(context[key], repr)
        lines.append(f"{_text(key)}: {value}")
    tb = None
    if isinstance(exception, BaseException):
        tb = _text(exception, lambda e: "".join(traceback.format_exception(e)).rstrip())
    return message, task, "\n".join(lines), tb


def cut_off(loop, fd, grace_left, serving, ended):
    """--graceful-timeout passed, or an immediate stop came, with requests in flight
    (the fd was written): cancels the requests' tasks and stops the loop once they have
    ended, or their grace is over (`grace_left()`: the grace in all and what is left of
    it, in seconds; an immediate stop shortens it), while it still serves
    (`serving()`); `ended()` is called then. Returns how many were cancelled."""
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass
    loop.remove_reader(fd)
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done() and _is_request(t)]
    exchanges = [x for x in (_serve(t)._postern_exchange for t in tasks) if x is not None]
    for t in tasks:
        t.cancel()

    async def stop_when_ended():
        try:
            await wait_for_tasks()
        except Exception as e:
            _report(loop, e, "the stop's cut-off failed")
        finally:
            # The tasks have ended, or had their grace: an immediate stop waits for
            # this (always said, or it would wait its whole bound).
            ended()
        # Not left to the server, which stops the loop once every request is
        # released: a request whose task has ended can still wait for a write the
        # front server does not take (for --read-timeout). Not once the loop has
        # stopped serving: a stray stop would end lifespan shutdown's wait (run()
        # runs it again).
        if serving():
            loop.stop()

    async def wait_for_tasks():
        pending = set(tasks)
        while pending:
            left = grace_left()[1]
            if left <= 0:
                break
            # Looked at again within 50 ms: an immediate stop may shorten the grace.
            _, pending = await asyncio.wait(pending, timeout=min(left, 0.05))
        if pending:
            grace = grace_left()[0]
            # Those that caught the cancellation and went on: the worker exits
            # without them, so each is named and its response ended now.
            for t in pending:
                try:
                    _serve(t)._postern_exchange._cut_unended(grace)
                except Exception as e:
                    _report(loop, e, "naming a request whose task outlived its cut-off failed")
        # A response whose write was on an executor thread (a stream to a front server
        # that reads slowly) ends when that write comes back, which its cut makes at
        # once: before the loop may close, or it ends unlogged.
        until = loop.time() + WRITES_BACK
        while any(x._writing for x in exchanges) and loop.time() < until:
            await asyncio.sleep(0.005)

    waiter = loop.create_task(stop_when_ended(), name=OWN + "the stop's cut-off")
    # The loop may stop before it resumes (the last task's end stops it), and an
    # immediate stop closes the loop then: not an error to report.
    waiter._log_destroy_pending = False
    return len(tasks)


def _through(loop, aw, tasks):
    """run(loop, aw), on to its end when something the loop runs meanwhile lets
    SystemExit or KeyboardInterrupt out of it (asyncio does, for a task or callback
    that raises them): each is reported, unless it is the outcome of one of `tasks`
    (reported with them), and the step goes on, so the rest of the stop still runs.
    `aw` has a bound of its own: each pass runs the loop until it is done or the
    next such exception."""
    fut = asyncio.ensure_future(aw, loop=loop)
    while True:
        try:
            return run(loop, fut)
        except BaseException as e:
            if fut.done():
                raise
            if not any(t.done() and not t.cancelled() and t.exception() is e for t in tasks):
                _report(loop, e, "a task or callback raised this out of the event loop at the stop")


def _report(loop, e, what):
    """Through the exception handler (stop.rs: an error line); the stop goes on."""
    loop.call_exception_handler({"message": f"{what}; the stop goes on", "exception": e})


def finish(loop, executor, timeout, aside):
    """After the last request and lifespan shutdown (the loop not running): cancels the
    tasks the app left running and runs the loop until they have ended, `timeout`
    seconds at most; then closes the async generators and waits for the default
    executor's jobs, `aside` seconds at most each. Returns (cancelled, still running,
    the steps that ran out of time)."""
    every = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in every:
        t.cancel()
    # A lifespan task that outlived its own cancellation (lifespan.py) had its second:
    # cancelled again, not waited for.
    every = [t for t in every if t.get_name() != LIFESPAN_LEFT]
    # postern's own (the cut-off's stop) are not the app's to count, nor a request's
    # task that outlived its cut-off (named then, by cut_off).
    tasks = [t for t in every if not t.get_name().startswith(OWN) and not _is_request(t)]
    left = 0
    if every:
        try:
            _, pending = _through(loop, asyncio.wait(every, timeout=timeout), tasks)
        except BaseException as e:
            _report(loop, e, "cancelling the tasks the app left running failed")
            pending = [t for t in tasks if not t.done()]
        left = len([t for t in tasks if t in pending])
        # Said above (a warning with their count, or the cut-off's lines): not again
        # as destroyed while pending when the loop is closed.
        for t in pending:
            t._log_destroy_pending = False
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                loop.call_exception_handler({
                    "message": "a task the app left running raised when it was cancelled at the stop",
                    "exception": t.exception(),
                    "task": t,
                })
    late = []
    # A lifespan left running (lifespan.py) may be suspended inside an async generator
    # (Starlette's and FastAPI's `@asynccontextmanager` lifespans): closing it fails
    # with "already running", which its WARN said already. Not an error line more.
    # regression (review 384): each such stop (each old worker at a reload) logged one.
    stubborn = [t for t in asyncio.all_tasks(loop) if t.get_name() == LIFESPAN_LEFT and not t.done()]
    handler = loop.get_exception_handler()
    if stubborn:
        def quiet(lp, context):
            e = context.get("exception")
            if "asyncgen" in context and isinstance(e, RuntimeError) and "already running" in str(e):
                return
            if handler is None:
                lp.default_exception_handler(context)
            else:
                handler(lp, context)
        loop.set_exception_handler(quiet)
    try:
        _through(loop, asyncio.wait_for(loop.shutdown_asyncgens(), aside), ())
    except asyncio.TimeoutError:
        late.append("loop.shutdown_asyncgens()")
    except BaseException as e:
        _report(loop, e, "closing the async generators failed")
    finally:
        if stubborn:
            loop.set_exception_handler(handler)
    # Not loop.shutdown_default_executor(): before Python 3.12 it joins its thread
    # without a timeout, even when cancelled, so a job stuck in a blocking call would
    # hold the worker for good. The same shutdown, waited for `aside` at most.
    waiter = threading.Thread(
        target=executor.shutdown,
        kwargs={"wait": True, "cancel_futures": True},
        name="python-asgi-executor-shutdown",
        daemon=True,
    )
    waiter.start()
    waiter.join(aside)
    if waiter.is_alive():
        late.append("the default executor's jobs")
    return len(tasks), left, late


def forget_pending(loop):
    """An immediate stop closes the loop with no finish(): the tasks still pending (a
    request's that outlived its cut-off, named then; the app's own) are not reported
    as destroyed while pending."""
    for t in asyncio.all_tasks(loop):
        if not t.done():
            t._log_destroy_pending = False
