# postern's side of the ASGI lifespan protocol (src/asgi/lifespan.rs; docs/protocols.md
# §9). One Lifespan per worker: its task runs the app's lifespan call on the worker's
# event loop from startup to shutdown. The Rust side drives it with
# loop.run_until_complete while the loop is not serving: before the first request
# (startup) and after the last one (shutdown).
import asyncio
import time

SPEC_VERSION = "2.0"
# How far past --lifespan-timeout a startup answer still counts as in time (the
# loop's timer and its callbacks' order).
LATE_SLACK = 0.1


def run(loop, aw):
    """loop.run_until_complete(aw), again after a stray loop.stop(): a request's task
    cut off at --graceful-timeout that ends during the shutdown makes the server stop
    the loop (it would stop serving then), which must not end the shutdown early."""
    fut = asyncio.ensure_future(aw, loop=loop)
    while True:
        try:
            return loop.run_until_complete(fut)
        except RuntimeError as e:
            if fut.done() or "stopped before" not in str(e):
                raise


# The messages that answer a phase of the lifespan scope.
ANSWERS = (
    "lifespan.startup.complete",
    "lifespan.startup.failed",
    "lifespan.shutdown.complete",
    "lifespan.shutdown.failed",
)


class Lifespan:
    def __init__(self, app, loop, report, answered):
        self.app = app
        self.loop = loop
        # Called with the exception when the app's lifespan call raises while the
        # worker serves (after startup.complete, before shutdown): logged at once.
        self.report = report
        # Called as the app sends lifespan.startup.complete in time: the worker then
        # waits for the loop to act on it, even past --lifespan-timeout (a task the
        # startup started may block the loop right after).
        self.answered = answered
        self._reported = False
        self.state = {}
        # Each a future resolved with (outcome, detail): outcome "complete", "late"
        # (startup: complete, after the timeout), "failed"
        # (detail: the app's message), "raised" (detail: the exception), "returned",
        # "ignored" (startup: receive() called again without an answer), "cancelled";
        # the waits add "timeout".
        self.started = loop.create_future()
        self.stopped = loop.create_future()
        self._shutdown_asked = loop.create_future()
        self._received = 0
        # The answer the app gave to each phase ("lifespan.startup" or
        # "lifespan.shutdown"): the message type it sent.
        self._answered = {}
        # Set by startup().
        self._began = self._timeout = None
        self.task = None

    async def _receive(self):
        self._received += 1
        if self._received == 1:
            return {"type": "lifespan.startup"}
        if self._received == 2:
            # Waiting for the next message without answering the startup: an app that
            # does not speak lifespan (it reads its scope's messages without looking).
            self._resolve(self.started, "ignored", None)
            await self._shutdown_asked
            return {"type": "lifespan.shutdown"}
        # Nothing follows the shutdown: a third receive() waits until the task goes.
        await self.loop.create_future()

    async def _send(self, message):
        kind = message.get("type") if isinstance(message, dict) else None
        # Each answer once, as the spec's state machine has it (uvicorn asserts the
        # same). regression (probe 347 LOW): a second answer was taken silently.
        if kind in ANSWERS:
            phase = kind.rsplit(".", 1)[0]
            if phase in self._answered:
                raise RuntimeError(
                    f"{kind} sent after {self._answered[phase]}: the {phase} was already "
                    "answered"
                )
            self._answered[phase] = kind
        if kind == "lifespan.startup.complete":
            # Timed when the app answers, not when the wait sees it (a task the
            # startup left blocking the loop may delay that). An answer past the
            # timeout comes from a startup that blocked the loop's own timer.
            in_time = time.monotonic() - self._began <= self._timeout + LATE_SLACK
            if in_time and not self.started.done():
                self.answered()
            self._resolve(self.started, "complete" if in_time else "late", None)
        elif kind == "lifespan.startup.failed":
            self._resolve(self.started, "failed", str(message.get("message", "")))
        elif kind == "lifespan.shutdown.complete":
            self._resolve(self.stopped, "complete", None)
        elif kind == "lifespan.shutdown.failed":
            self._resolve(self.stopped, "failed", str(message.get("message", "")))
        else:
            raise RuntimeError(
                f"unexpected ASGI message on the lifespan scope: {kind!r} (expected "
                "lifespan.startup.complete/failed or lifespan.shutdown.complete/failed)"
            )

    @staticmethod
    def _resolve(fut, outcome, detail):
        if not fut.done():
            fut.set_result((outcome, detail))

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": SPEC_VERSION},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            self._resolve(self.started, "cancelled", None)
            self._resolve(self.stopped, "cancelled", None)
            raise
        except BaseException as e:  # noqa: B036 -- SystemExit too: reported, not fatal here
            serving = self.started.done() and self.started.result()[0] == "complete"
            if serving and not self._shutdown_asked.done():
                self._reported = True
                self.report(e)
            self._resolve(self.started, "raised", e)
            self._resolve(self.stopped, "raised", e)
        else:
            self._resolve(self.started, "returned", None)
            self._resolve(self.stopped, "returned", None)

    async def _wait(self, fut, timeout):
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            return ("timeout", None)

    def startup(self, timeout):
        """Starts the app's lifespan call and waits for its startup answer (the loop
        must not be running). Returns (outcome, detail)."""
        self._began = time.monotonic()
        self._timeout = timeout
        self.task = self.loop.create_task(self._main())
        return run(self.loop, self._wait(self.started, timeout))

    def shutdown(self, timeout):
        """Asks for shutdown and waits for its answer (the loop must not be running).
        Returns (outcome, detail); the task is cancelled if it is still running."""
        if not self.task.done():
            self._resolve(self._shutdown_asked, "shutdown", None)
            result = run(self.loop, self._wait(self.stopped, timeout))
        elif self._reported:
            result = ("reported", None)
        else:
            result = self.stopped.result() if self.stopped.done() else ("returned", None)
        self.cancel()
        if result[0] == "timeout" and not self.task.done():
            result = ("timeout-left", None)
        return result

    def cancel(self):
        """Cancels the lifespan task if it still runs, and lets it finish."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                run(self.loop, asyncio.wait([self.task], timeout=1.0))
            except RuntimeError:
                pass  # the loop is running or closed: the task goes with it
            if not self.task.done():
                # It caught its cancellation and goes on: the stop goes on without it,
                # not waited for again among the tasks the app left running (stop.py's
                # LIFESPAN_LEFT: the same name), nor reported destroyed while pending.
                # regression (probe 381): it held the stop for the rest of
                # --graceful-timeout.
                self.task.set_name("postern: lifespan task left running")
                self.task._log_destroy_pending = False
