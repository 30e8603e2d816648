//! How a request's task is started (src/asgi/run.rs `Spawn`): the C `asyncio.Task`
//! called directly when the loop has no task factory, the loop's `create_task` (so the
//! app's factory) when it has one. Either way the app runs in a real asyncio task of
//! the running loop (anyio, under Starlette and FastAPI, needs `current_task()`).

use std::io::{Read, Write};
use std::path::Path;

use protocol_tests::harness::{
    example_venv, in_ci, parse_http, tempdir, uwsgi_packet, AsgiApp, Postern, Spawn,
};

/// The app: a request answers with its task's type, whether that task is of the running
/// loop and registered with it, and how many tasks the app's factory made.
fn app() -> String {
    AsgiApp::new(
        r#"
import asyncio

MADE = []

def factory(loop, coro, **kw):
    MADE.append(1)
    return asyncio.Task(coro, loop=loop, **kw)
"#,
    )
    .http(
        r#"
loop = asyncio.get_running_loop()
if scope["path"] == "/factory":
    loop.set_task_factory(factory)
elif scope["path"] == "/no-factory":
    loop.set_task_factory(None)
task = asyncio.current_task()
body = "%s %s %s %d" % (type(task).__name__, task.get_loop() is loop,
                        task in asyncio.all_tasks(loop), len(MADE))
await send({"type": "http.response.start", "status": 200, "headers": []})
await send({"type": "http.response.body", "body": body.encode()})
"#,
    )
}

fn serve(dir: &Path, event_loop: &str, venv: Option<&Path>) -> Postern {
    let s = Spawn::asgi_tcp(dir, "asgi_task_app", &app()).args(["--loop", event_loop]);
    match venv {
        Some(v) => s.venv(v),
        None => s,
    }
    .start()
}

fn get(p: &Postern, path: &str) -> String {
    let (status, body) = get_from(&p.addr, path).expect("a response");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn a_request_runs_in_an_asyncio_task_of_the_loop_and_an_app_task_factory_is_used() {
    let dir = tempdir();
    let p = serve(dir.path(), "asyncio", None);
    // No factory: a real asyncio.Task of the running loop, registered with it.
    assert_eq!(get(&p, "/"), "Task True True 0");
    // The app sets a factory during a request: the next requests' tasks come from it.
    assert_eq!(get(&p, "/factory"), "Task True True 0");
    assert_eq!(get(&p, "/"), "Task True True 1");
    assert_eq!(get(&p, "/no-factory"), "Task True True 2");
    assert_eq!(get(&p, "/"), "Task True True 2");
}

#[test]
fn an_asgi_worker_on_uvloop_starts_and_serves() {
    // regression: once nothing imported `threading` on the main thread (6fbffd0),
    // `threading.main_thread()` was the loop thread, uvloop installed signal wake-up
    // fds from it and every --loop uvloop (or auto with uvloop installed) worker
    // failed at lifespan startup ("set_wakeup_fd only works in main thread").
    let Some(venv) = example_venv() else {
        assert!(
            !in_ci(),
            "no venv with uvloop (examples/requirements.txt), and CI=true"
        );
        eprintln!("!!!!! SKIPPING the uvloop test: no venv with examples/requirements.txt !!!!!");
        return;
    };
    let dir = tempdir();
    // An app that imports nothing (hello_asgi.py): one importing asyncio at the top
    // imported `threading` on the main thread itself, which hid the bug.
    let p = Spawn::asgi_tcp(dir.path(), "asgi_plain_app", PLAIN)
        .args(["--loop", "uvloop"])
        .venv(&venv)
        .start();
    assert_eq!(get(&p, "/"), "plain");
}

const PLAIN: &str = r#"
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})
"#;

const REPLACED_TASK: &str = r#"
import asyncio, os
_C = asyncio.Task
HOOKED = []
if os.environ["TASK_MODE"] == "function":
    def Task(coro, *, loop=None, name=None, context=None):
        HOOKED.append(1)
        return _C(coro, loop=loop, name=name, context=context)
    asyncio.Task = Task
else:
    class Meta(type(_C)):
        def __call__(cls, *a, **kw):
            HOOKED.append(1)
            return _C(*a, **kw)
    class Traced(_C, metaclass=Meta):
        pass
    asyncio.Task = Traced

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%s %d" % (type(asyncio.current_task()).__name__, len(HOOKED))).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"#;

// regression: an app (or instrumentation) that replaced asyncio.Task with a factory
// function killed the event loop at start (the worker said ready and never answered),
// and a class whose metaclass hooks construction was no longer called.
#[test]
fn an_asyncio_task_replaced_by_the_app_is_called_for_each_request() {
    for mode in ["function", "metaclass"] {
        let dir = tempdir();
        let p = Spawn::asgi_tcp(dir.path(), "replaced_task_app", REPLACED_TASK)
            .env("TASK_MODE", mode)
            .start();
        let (status, first) = p.get("/");
        assert_eq!(status, 200, "{mode}: {}", p.logs());
        let (_, second) = p.get("/");
        let (first, second) = (
            String::from_utf8(first).unwrap(),
            String::from_utf8(second).unwrap(),
        );
        assert!(first.starts_with("Task "), "{mode}: {first}");
        let n = |s: &str| s.split(' ').nth(1).unwrap().parse::<u32>().unwrap();
        assert!(n(&second) > n(&first), "{mode}: {first} then {second}");
    }
}

/// The app of `a_request_tasks_first_step_runs_at_once_with_what_a_loop_step_has`: each
/// request answers with the context variable the requests before it set (never seen:
/// each task runs in its own copy of the context) and what its path asks for.
const FIRST_STEP: &str = r#"
import asyncio, contextvars

VAR = contextvars.ContextVar("var", default="unset")
KEPT = {}
OWN = []

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    loop = asyncio.get_running_loop()
    path = scope["path"]
    seen = VAR.get()
    VAR.set(path)
    if path == "/wait":
        KEPT["event"] = asyncio.Event()
        KEPT["task"] = asyncio.current_task()
        await KEPT["event"].wait()
        out = "woken"
    elif path == "/look":
        task = KEPT.get("task")
        if task is None:
            out = "none"
        else:
            out = "%s %s" % (task in asyncio.all_tasks(loop), task.done())
            KEPT["event"].set()
    elif path == "/call-soon":
        # The app's own call_soon, with and without a context, and a handle it cancels.
        # The first is the form the shadow keeps while a request's task is made (one
        # positional argument and context=): outside that, it is scheduled, and runs in
        # the context given.
        ran = []
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "ctx")
        handle = loop.call_soon(lambda: ran.append(VAR.get()), context=ctx)
        loop.call_soon(ran.append, "cancelled").cancel()
        loop.call_soon(ran.append, "plain")
        await asyncio.sleep(0)
        out = "%s %s %s" % (",".join(ran), type(handle).__name__, handle.cancelled())
    elif path == "/inspect":
        import inspect
        cs = loop.call_soon
        out = "%s %s %s" % (inspect.signature(cs), cs.__self__ is loop, cs.__name__)
    elif path == "/class-patch":
        # A patch of the loop's class made now (as tracing libraries make them, at their
        # first use) is what the app's loop.call_soon runs.
        cls = type(loop)
        own = cls.__dict__.get("call_soon")
        real = cls.call_soon
        traced = []
        def patched(self, callback, *args, **kw):
            traced.append(self is loop and getattr(callback, "__self__", None) is ran)
            return real(self, callback, *args, **kw)
        ran = []
        cls.call_soon = patched
        try:
            loop.call_soon(ran.append, "patched")
            await asyncio.sleep(0)
        finally:
            if own is None:
                del cls.call_soon
            else:
                cls.call_soon = own
        loop.call_soon(ran.append, "unpatched")
        await asyncio.sleep(0)
        out = "%d %s" % (traced.count(True), ",".join(ran))
    elif path == "/class-wraps":
        # A class-level wrapper around the loop.call_soon taken from the loop (what
        # mock.patch.object(type(loop), "call_soon", wraps=loop.call_soon) makes).
        from unittest import mock
        ran = []
        with mock.patch.object(type(loop), "call_soon", wraps=loop.call_soon) as m:
            loop.call_soon(ran.append, "wrapped")
            await asyncio.sleep(0)
        out = "%d %s" % (m.call_count, ",".join(ran))
    elif path == "/own-call-soon":
        def own(callback, *args, **kw):
            OWN.append(1)
            return type(loop).call_soon(loop, callback, *args, **kw)
        loop.call_soon = own
        out = "set"
    else:
        out = str(len(OWN))
    body = ("%s %s" % (seen, out)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"#;

// A request's task runs its first step in the loop callback that took the request
// (run.rs `Eager`, as 3.12's eager tasks): what the app sees there and after is what a
// step the loop schedules has.
#[test]
fn a_request_tasks_first_step_runs_at_once_with_what_a_loop_step_has() {
    let mut loops = vec![("asyncio", None)];
    match example_venv() {
        Some(v) => loops.push(("uvloop", Some(v))),
        None => assert!(
            !in_ci(),
            "no venv with uvloop (examples/requirements.txt), and CI=true"
        ),
    }
    for (event_loop, venv) in loops {
        let dir = tempdir();
        let s =
            Spawn::asgi_tcp(dir.path(), "first_step_app", FIRST_STEP).args(["--loop", event_loop]);
        let p = match venv {
            Some(v) => s.venv(&v),
            None => s,
        }
        .start();
        let get = |path: &str| {
            let (status, body) = p.get(path);
            assert_eq!(status, 200, "{event_loop} {path}: {}", p.logs());
            String::from_utf8(body).unwrap()
        };
        // Each task has its own context: what one request set, the next does not see.
        assert_eq!(get("/a"), "unset 0", "{event_loop}");
        assert_eq!(get("/b"), "unset 0", "{event_loop}");
        // A task waiting after its first step is registered (in all_tasks()), and
        // goes on when woken; once done, all_tasks() leaves it out.
        let mut waiting = p.addr.connect().unwrap();
        waiting
            .write_all(&uwsgi_packet(&[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/wait"),
                ("SERVER_NAME", "test"),
                ("SERVER_PORT", "80"),
                ("SERVER_PROTOCOL", "HTTP/1.1"),
            ]))
            .unwrap();
        let mut look = get("/look");
        for _ in 0..250 {
            if look != "unset none" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            look = get("/look");
        }
        assert_eq!(look, "unset True False", "{event_loop}");
        let mut out = Vec::new();
        let _ = waiting.read_to_end(&mut out);
        let r = parse_http(&out).expect("the waiting request's response");
        assert_eq!(r.text(), "unset woken", "{event_loop}");
        assert_eq!(get("/look"), "unset False True", "{event_loop}");
        // The loop's call_soon, called by the app, schedules as it did (postern's
        // shadow of it, run.rs `Eager`, passes every call on outside a request task's
        // making).
        assert_eq!(
            get("/call-soon"),
            "unset ctx,plain Handle False",
            "{event_loop}"
        );
        // What the app sees of loop.call_soon is the loop's method: bound to the loop,
        // with its signature; a patch of the loop's class made after the first
        // request is what a call runs (since 77ac57d left the shadow on, it was
        // bypassed, and inspect.signature raised ValueError).
        assert_eq!(
            get("/inspect"),
            "unset (callback, *args, context=None) True call_soon",
            "{event_loop}"
        );
        assert_eq!(
            get("/class-patch"),
            "unset 1 patched,unpatched",
            "{event_loop}"
        );
        // regression: a class-level wrapper of the call_soon taken from the loop
        // recursed without end (RecursionError) once f64a953 passed calls on to the
        // class. The wrapper sees the app's call and the task's own after sleep(0).
        assert_eq!(get("/class-wraps"), "unset 2 wrapped", "{event_loop}");
        // A call_soon the app set on the loop itself is what schedules the next
        // requests' first steps, as before.
        assert_eq!(get("/own-call-soon"), "unset set", "{event_loop}");
        let n = |s: String| s.split(' ').nth(1).unwrap().parse::<u32>().unwrap();
        let first = n(get("/count"));
        let second = n(get("/count"));
        assert!(
            first >= 1 && second > first,
            "{event_loop}: {first} then {second}"
        );
    }
}

fn get_from(addr: &protocol_tests::harness::Addr, path: &str) -> Option<(u16, Vec<u8>)> {
    let out = protocol_tests::harness::raw(
        addr,
        &uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", path),
            ("REQUEST_URI", path),
            ("SERVER_NAME", "test"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ]),
    );
    parse_http(&out).map(|r| (r.status, r.body))
}

// regression: a native wrapper around the app's coroutine (reverted) stepped what the
// app's call returned as a coroutine, so an app whose call returns another awaitable (a
// class whose instances are awaitable, like Starlette's HTTPEndpoint) answered 500.
#[test]
fn an_app_whose_call_returns_an_awaitable_that_is_not_a_coroutine_is_served() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("endpoint_app.py"),
        r#"
class Endpoint:
    def __init__(self, scope, receive, send):
        self.scope, self.receive, self.send = scope, receive, send

    def __await__(self):
        return self.run().__await__()

    async def run(self):
        if self.scope["type"] != "http":
            return
        await self.send({"type": "http.response.start", "status": 200, "headers": []})
        await self.send({"type": "http.response.body", "body": b"endpoint"})

app = Endpoint
"#,
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "endpoint_app:app")
        .cwd(dir.path())
        .start();
    for _ in 0..2 {
        assert_eq!(
            get_from(&p.addr, "/x"),
            Some((200, b"endpoint".to_vec())),
            "{}",
            p.logs()
        );
    }
}

// regression: with that wrapper, a request whose task the garbage collector took while
// it still waited (the app awaits a local Event nobody keeps: asyncio's "Task was
// destroyed but it is pending!") was never ended: no answer, no access line, and its
// --max-concurrency place never given back (with 1, the worker never served again).
#[test]
fn a_request_whose_pending_task_is_collected_is_ended_and_frees_its_place() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("orphan_app.py"),
        r#"
import asyncio, gc

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/orphan":
        asyncio.get_running_loop().call_later(0.2, gc.collect)
        await asyncio.Event().wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"#,
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "orphan_app:app")
        .cwd(dir.path())
        .args(["--interface", "asgi", "--max-concurrency", "1"])
        .start();
    let orphan = get_from(&p.addr, "/orphan");
    assert_eq!(orphan.map(|r| r.0), Some(500), "{}", p.logs());
    // Its place is free again: the next request is served.
    assert_eq!(
        get_from(&p.addr, "/"),
        Some((200, b"ok".to_vec())),
        "{}",
        p.logs()
    );
}

// The wrapper that ends a request in its task's last step (src/asgi/serve.rs) shows the
// app's coroutine: before, a Python `async def serve` did, and its frame was the first
// line of every traceback the app's exceptions logged (`File "postern_asgi.py", line 3,
// in serve`) and the only frame `Task.get_stack()` gave.
#[test]
fn a_request_tasks_traceback_stack_and_repr_show_the_apps_coroutine_and_cancels_reach_it() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("frames_app.py"),
        r#"
import asyncio, inspect

async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/boom":
        raise ValueError("boom-marker")
    task = asyncio.current_task()
    if scope["path"] == "/cancel":
        task.cancel()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            print("cancel-marker reached the app")
            raise
    names = [f.f_code.co_name for f in task.get_stack()]
    coro = task.get_coro()
    # From another task, while this one waits: suspended (inspect reads cr_suspended).
    async def look():
        return inspect.getcoroutinestate(coro)
    state = await asyncio.get_running_loop().create_task(look())
    body = "%s|%s|%s|%s|%s" % (names, coro.__qualname__, coro.cr_running, state, repr(task))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})
"#,
    )
    .unwrap();
    let p = Spawn::tcp(dir.path(), "frames_app:application")
        .cwd(dir.path())
        .args(["--interface", "asgi"])
        .start();
    let (status, body) = get_from(&p.addr, "/").expect("a response");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}\n{}", p.logs());
    let mut parts = body.splitn(5, '|');
    // The running frame's callers (the loop's, under asyncio) come first; no wrapper.
    let names = parts.next().unwrap_or_default();
    assert!(
        names.ends_with("'application']") && !names.contains("serve"),
        "{body}"
    );
    assert_eq!(parts.next(), Some("application"), "{body}");
    assert_eq!(parts.next(), Some("True"), "{body}");
    assert_eq!(parts.next(), Some("CORO_SUSPENDED"), "{body}");
    let repr = parts.next().unwrap_or_default();
    assert!(
        repr.contains("coro=<application() running at") && repr.contains("frames_app.py:"),
        "{repr}"
    );
    assert_eq!(get_from(&p.addr, "/boom").map(|r| r.0), Some(500));
    assert_eq!(get_from(&p.addr, "/cancel").map(|r| r.0), Some(500));
    // The next request is served as usual.
    assert_eq!(get_from(&p.addr, "/").map(|r| r.0), Some(200));
    // The log is written by a thread of its own: wait for the last line asked for.
    assert!(
        p.wait_log("the request's task was cancelled", 10),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let boom = logs
        .lines()
        .position(|l| l.contains("the app raised an exception"))
        .expect("the exception is logged");
    let traceback: Vec<&str> = logs.lines().skip(boom + 1).take(4).collect();
    assert!(
        traceback[0].contains("frames_app.py") && traceback[0].contains("in application"),
        "the traceback starts at the app's frame: {traceback:?}\n{logs}"
    );
    assert!(
        !logs.contains("postern_asgi") && !logs.contains("in serve"),
        "{logs}"
    );
    assert!(logs.contains("cancel-marker reached the app"), "{logs}");
    assert!(logs.contains("the request's task was cancelled"), "{logs}");
}
