//! `--timeout` and `--slow-log` for ASGI: the master's SIGUSR2 makes faulthandler dump
//! every thread's stack, which for the loop thread shows only the loop waiting; a stuck
//! request is a task suspended somewhere. So the worker also logs the stack of each of
//! its tasks: once the threads' stacks are logged (`crate::wsgi::stacks`), an eventfd
//! is written, and a thread of ours ("python-asgi-dump") formats the tasks' stacks.
//!
//! A thread, not the loop: a task that blocks the loop (a blocking call in a
//! coroutine) would keep the loop from ever answering the dump before the master kills
//! the worker, and the blocker is what the log must name. The thread takes the GIL
//! (the blocked loop releases it in a blocking call, or every switch interval) and
//! asks asyncio which task the loop is running (`asyncio.current_task(loop)`, which
//! asyncio keeps anyway: nothing is added per step): none when the loop waits for
//! events, else the task that holds it, whose stack is the loop thread's.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use pyo3::prelude::*;

/// When the threads' stacks are dumped on SIGUSR2 (a worker under the master), starts the thread that logs the stacks of the tasks
/// on `event_loop` (called on the loop thread) at each dump: itself when a task blocks
/// the loop, or the loop has not ticked for longer than `timeout` (`--timeout` under a
/// master: [`super::beat`]), else through `on_loop` (called on the loop; it calls
/// [`log_tasks`]).
pub fn start(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    on_loop: Py<PyAny>,
    timeout: Option<std::time::Duration>,
) -> PyResult<()> {
    let Some(fd) = install()? else {
        return Ok(());
    };
    let loop_thread: u64 = py
        .import("threading")?
        .call_method0("get_ident")?
        .extract()?;
    let format = format_module(py)?.unbind();
    let event_loop = event_loop.clone().unbind();
    std::thread::Builder::new()
        .name("python-asgi-dump".into())
        .spawn(move || loop {
            // Left running: it ends with the process.
            let mut pfd = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            if rustix::event::poll(&mut pfd, None).is_err() {
                continue;
            }
            let mut n = [0u8; 8];
            let _ = rustix::io::read(fd.as_fd(), &mut n);
            Python::attach(|py| {
                let event_loop = event_loop.bind(py);
                let stuck = timeout.and_then(|t| {
                    super::beat::since_last().and_then(|age| super::beat::blocked_for(age, t))
                });
                if let Some(blocked_for) = stuck {
                    loop_blocked(py, format.bind(py), event_loop, loop_thread, blocked_for);
                    return;
                }
                if blocked(py, format.bind(py), event_loop, loop_thread) {
                    return;
                }
                let call = event_loop.call_method1(
                    pyo3::intern!(py, "call_soon_threadsafe"),
                    (on_loop.bind(py),),
                );
                if let Err(e) = call {
                    tracing::debug!(error = %e, "the stack dump could not reach the event loop");
                }
            });
        })
        .map_err(PyErr::from)?;
    Ok(())
}

/// Off the loop: if the loop is in a task's step, logs that task as the blocker and
/// every task's stack (named by their scopes: the exchanges belong to the loop
/// thread), and returns true.
fn blocked(
    py: Python<'_>,
    format: &Bound<'_, PyModule>,
    event_loop: &Bound<'_, PyAny>,
    tid: u64,
) -> bool {
    match format
        .call_method1("blocker", (event_loop, tid))
        .and_then(|b| b.extract::<Option<(String, String)>>())
    {
        Ok(Some((task, stack))) => tracing::error!(
            task = %task,
            "the event loop is blocked by this task: at the stack dump the loop was running it instead of waiting for events, so every other task waits for it (and the request --timeout named may be one of them); a blocking call in a coroutine (time.sleep, sync I/O, long CPU work) does this. Where it runs (the python-asgi thread in the dump above):\n{stack}"
        ),
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(detail = %crate::wsgi::traceback(py, &e), "cannot tell which task the event loop runs");
            return false;
        }
    }
    log_stacks(py, format, event_loop, "scope_name");
    true
}

/// Off the loop, whose heartbeat stopped past `--timeout` (the master kills the worker
/// for it): logs where the loop thread is (its innermost Python frame, the task it runs
/// if any, its stack) and every task's stack.
fn loop_blocked(
    py: Python<'_>,
    format: &Bound<'_, PyModule>,
    event_loop: &Bound<'_, PyAny>,
    tid: u64,
    blocked_for: std::time::Duration,
) {
    let secs = blocked_for.as_secs_f64();
    match format
        .call_method1("stuck", (event_loop, tid))
        .and_then(|b| b.extract::<Option<(String, Option<String>, String)>>())
    {
        Ok(Some((at, task, stack))) => tracing::error!(
            pid = std::process::id(),
            task = task.as_deref().map(tracing::field::display),
            "event loop blocked for {secs:.1} s (in {at}); replacing the worker. No request was past --timeout, and the loop took none meanwhile: a blocking call in a coroutine or callback (time.sleep, sync I/O, long CPU work) does this. The loop thread's stack (python-asgi in the dump above):\n{stack}"
        ),
        Ok(None) => tracing::error!(
            pid = std::process::id(),
            "event loop blocked for {secs:.1} s (in no Python frame: a C call?); replacing the worker"
        ),
        Err(e) => {
            tracing::warn!(detail = %crate::wsgi::traceback(py, &e), "cannot tell where the event loop is blocked");
        }
    }
    log_stacks(py, format, event_loop, "scope_name");
}

/// On the loop thread: logs every task's stack.
pub fn log_tasks(py: Python<'_>, event_loop: &Bound<'_, PyAny>) {
    match format_module(py) {
        Ok(format) => log_stacks(py, &format, event_loop, "describe"),
        Err(e) => {
            tracing::warn!(detail = %crate::wsgi::traceback(py, &e), "cannot list the ASGI tasks' stacks")
        }
    }
}

/// `FORMAT` as a module, with stop.py's `_serve` (which finds a request's wrapper down a
/// task factory's wrappers) as its `_serve`; without it (stop.py failed to load), a
/// request is found as the task's own coroutine only.
fn format_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let format = PyModule::from_code(py, FORMAT, c"postern_asgi_dump.py", c"postern_asgi_dump")?;
    if let Ok(serve) = super::stop::serve_finder(py) {
        format.setattr("_serve", serve)?;
    }
    Ok(format)
}

/// Logs every task's stack, each named by `FORMAT`'s function `namer`.
fn log_stacks(
    py: Python<'_>,
    format: &Bound<'_, PyModule>,
    event_loop: &Bound<'_, PyAny>,
    namer: &str,
) {
    match format
        .call_method1("stacks", (event_loop, format.getattr(namer).ok()))
        .and_then(|r| r.extract::<(usize, String)>())
    {
        Ok((n, stacks)) => tracing::warn!(
            tasks = n,
            "stacks of the ASGI tasks on the event loop:\n{stacks}"
        ),
        Err(e) => {
            tracing::warn!(detail = %crate::wsgi::traceback(py, &e), "cannot list the ASGI tasks' stacks")
        }
    }
}

fn install() -> PyResult<Option<OwnedFd>> {
    if !crate::wsgi::stacks::enabled() {
        return Ok(None);
    }
    let fd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .map_err(std::io::Error::from)?;
    // The eventfd lives as long as the process (the thread below holds it).
    let raw = fd.as_raw_fd();
    crate::wsgi::stacks::after_dump(Box::new(move || {
        // SAFETY: `raw` stays open: the dump thread owns it and never ends.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }));
    Ok(Some(fd))
}

/// Formats a task's stack down the chain of awaits (a suspended task's own stack shows
/// only its outermost coroutine; the app's frame that waits is further down).
const FORMAT: &std::ffi::CStr = cr#"import asyncio, sys, traceback
_serve = None
def serve_of(task):
    # A request's task runs serve.rs's wrapper of the app's coroutine, maybe inside a
    # task factory's own wrappers (sentry_sdk's): stop.py's _serve finds it there.
    return _serve(task) if _serve is not None else task.get_coro()
def describe(task):
    # On the loop thread only (the exchange is the loop's).
    try:
        return serve_of(task)._postern_exchange._describe()
    except Exception:
        return scope_name(task)
def scope_name(task):
    # On any thread: the request's method and path from the scope the app got.
    try:
        app = serve_of(task)._postern_coro
        for v in app.cr_frame.f_locals.values():
            if isinstance(v, dict) and v.get('type') == 'http':
                q = v.get('query_string') or b''
                q = ('?' + q.decode('latin-1')) if q else ''
                # The scope's path includes its root_path already.
                return '%s %s%s' % (v.get('method'), v.get('path'), q)
    except Exception:
        pass
    # Not a request's: a task the app started (its name, and its coroutine's).
    coro = getattr(task.get_coro(), '__qualname__', None)
    return '%s (%s)' % (task.get_name(), coro) if coro else task.get_name()
def stuck(loop, tid):
    # Off the loop thread: where the loop thread is, the task it runs, its stack.
    frame = sys._current_frames().get(tid)
    if frame is None:
        return None
    code = frame.f_code
    at = '%s:%d %s' % (code.co_filename, frame.f_lineno, code.co_name)
    task = asyncio.current_task(loop)
    name = scope_name(task) if task is not None else None
    return at, name, ''.join(traceback.format_stack(frame))
def blocker(loop, tid):
    # Off the loop thread: the task whose step the loop is in, if any.
    task = asyncio.current_task(loop)
    if task is None:
        return None
    frame = sys._current_frames().get(tid)
    stack = ''.join(traceback.format_stack(frame)) if frame is not None else ''
    return scope_name(task), stack
def stacks(loop, namer):
    out = []
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        coro = task.get_coro()
        name = namer(task)
        out.append('Task %s (most recent call last):\n' % name)
        while coro is not None:
            f = getattr(coro, 'cr_frame', None) or getattr(coro, 'gi_frame', None)
            if f is not None:
                out.append('  File "%s", line %d, in %s\n' % (f.f_code.co_filename, f.f_lineno, f.f_code.co_name))
            coro = getattr(coro, 'cr_await', None) or getattr(coro, 'gi_yieldfrom', None)
    return len(tasks), ''.join(out)
"#;
