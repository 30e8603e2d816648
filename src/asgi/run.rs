//! The loop thread ("python-asgi"): one asyncio event loop per worker process.
//!
//! The loop watches the acceptor's epoll fd (`loop.add_reader`: an epoll inside the
//! loop's own epoll is fine): when it is readable, the callback takes the next request
//! that is ready with the acceptor's non-blocking step ([`Source::try_next`]: the same
//! accept, first read and FastCGI handling as the WSGI threads) and starts its task in
//! that same wake-up. The listeners themselves sit in the loop's epoll, their events
//! carrying the number of an eventfd the loop watches with `_accept`, which accepts
//! first ([`Source::try_accept`]). There is no other thread between the socket and the
//! app. At `--max-concurrency` tasks in flight the reader is removed, so connections
//! wait in the listen queue, and it comes back when a task ends.
//!
//! At the stop the acceptor says it is draining; the rest (requests the slow lane
//! still completes) comes from the blocking [`Source::next`] on a helper thread that
//! hands each to the loop, the in-flight tasks finish, lifespan shutdown runs, the
//! tasks the app left running are cancelled, and the thread ends ([`super::stop`]:
//! also the cut-off at `--graceful-timeout`).

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet, PyString, PyTuple, PyType};

use super::http::{Ctx, Exchange};
use super::lifespan::{self, Lifespan, LifespanMode};
use super::stop::{self, Stop};
use super::{scope, AsgiError, AsgiSettings};
use crate::wsgi::{traceback, App, Request, Settings, Source, TryNext};

/// The running loop thread, to join at shutdown.
pub struct Running {
    thread: JoinHandle<()>,
    stop: Arc<Stop>,
}

/// Starts the loop thread serving `app` from `source`; returns once lifespan startup
/// has completed (the worker reports ready only then), or with its failure.
pub fn start(
    app: App,
    settings: Settings,
    asgi: AsgiSettings,
    source: Arc<dyn Source>,
) -> Result<Running, AsgiError> {
    crate::wsgi::response::watch_statuses(settings.monitor.as_ref());
    let (tx, rx) = std::sync::mpsc::channel::<Setup>();
    let stop = Stop::new().map_err(AsgiError::Thread)?;
    let stopping = Arc::clone(&stop);
    let (lifespan_mode, lifespan_timeout) = (asgi.lifespan, asgi.lifespan_timeout);
    let answered = lifespan::Answered::new(settings.monitor.clone());
    let answered_in_loop = Arc::clone(&answered);
    // `threading` is first imported here, on the process's main thread, so that
    // `threading.main_thread()` is this thread and not the loop's: uvloop asks it
    // whether it runs on the main thread, and there it would install signal wake-up
    // fds, which Python refuses off the main thread (lifespan startup failed).
    Python::attach(|py| py.import("threading").map(drop)).map_err(|e| AsgiError::Loop {
        option: asgi.event_loop,
        detail: e.to_string(),
    })?;
    let handle = std::thread::Builder::new()
        .name("python-asgi".into())
        .stack_size(crate::wsgi::python_thread_stack())
        .spawn(move || {
            Python::attach(|py| {
                let (event_loop, executor, lifespan) =
                    match setup(py, &app, &settings, &asgi, &stopping, &answered_in_loop, &tx) {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(Setup::Done(Err(e)));
                            return;
                        }
                    };
                if tx.send(Setup::Done(Ok(()))).is_err() {
                    // `start` gave up on it (a startup that blocked the loop): the
                    // process exits; it must not serve meanwhile.
                    return;
                }
                let stop = &stopping;
                let failed = serve(
                    py,
                    &event_loop,
                    app,
                    settings,
                    &asgi,
                    source,
                    &lifespan,
                    stop,
                )
                .map_err(|e| {
                    tracing::error!(detail = %traceback(py, &e), "the ASGI event loop failed; this process exits (a worker is replaced by the master)");
                })
                .is_err();
                // The order of asyncio.run() and uvicorn: the requests are over (or cut
                // off), lifespan shutdown, then what the app left running.
                stop.after_serving(&event_loop, asgi.lifespan_timeout);
                // An immediate stop (SIGQUIT, a second signal) runs no shutdown: the
                // worker exits as soon as the requests are cut off, and a shutdown
                // begun then would be cut halfway (uvicorn's second Ctrl-C does the
                // same). regression (review 354): it began, and was cut 100 ms in.
                if stop.immediate() {
                    tracing::info!("no lifespan shutdown: an immediate stop (SIGQUIT, a second signal, a --timeout kill)");
                    stop::forget_pending(py, &event_loop);
                } else {
                    lifespan.shutdown(py, &event_loop, asgi.lifespan_timeout);
                    stop::finish(py, &event_loop, &executor, stop);
                }
                let left = super::http::forget_jobs();
                if left > 0 {
                    tracing::debug!(jobs = left, "writes still on the I/O threads when the event loop stopped; their requests were cut off");
                }
                let _ = event_loop.call_method0(intern!(py, "close"));
                if failed {
                    // Without its loop the process would go on accepting connections
                    // that nothing answers.
                    // regression: a loop that failed left a worker "ready" that hung
                    // every request (review-asgi).
                    crate::logging::finish();
                    std::process::exit(1);
                }
            })
        })
        .map_err(AsgiError::Thread)?;
    // The loop enforces --lifespan-timeout itself, unless a sync call in the app's
    // startup blocks it: then this thread does, a little later. Timed from the
    // startup's beginning: making the loop (importing uvloop) and its executor is
    // bounded only as the import is (the master's --worker-start-timeout).
    // regression: startup blocked in time.sleep(15) with --lifespan-timeout 2 went
    // unnoticed for 15 s, and its late completion was accepted.
    let done = |m: Result<Setup, RecvTimeoutError>| match m {
        Ok(Setup::Done(r)) => Ok(r),
        // Said once only; never again.
        Ok(Setup::Lifespan) => Err(RecvTimeoutError::Disconnected),
        Err(e) => Err(e),
    };
    let began = rx.recv().map_err(|_| RecvTimeoutError::Disconnected);
    let started = match began {
        Ok(Setup::Lifespan) if lifespan_mode == LifespanMode::Off => {
            done(rx.recv().map_err(|_| RecvTimeoutError::Disconnected))
        }
        Ok(Setup::Lifespan) => match done(rx.recv_timeout(lifespan_timeout + STARTUP_GRACE)) {
            // The app answered in time, and something blocked the loop since (a task
            // its startup started, in a sync call): the answer stands; the worker is
            // ready once the loop takes it.
            // regression (hostile): a Starlette lifespan that started a task calling
            // time.sleep(10) and yielded at once failed as a startup that blocks.
            Err(RecvTimeoutError::Timeout) if answered.get() => {
                tracing::warn!(
                    "the app answered its lifespan startup in time, but the event loop has been blocked since (a task started at startup, in a sync call?): the worker is ready once it is free, if within another --lifespan-timeout"
                );
                match done(rx.recv_timeout(lifespan_timeout.max(STARTUP_GRACE))) {
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(lifespan::LifespanError::BlockedAfterAnswer {
                            timeout: lifespan_timeout,
                        }
                        .into())
                    }
                    other => other,
                }
            }
            other => other,
        },
        other => done(other),
    };
    match started {
        Ok(Ok(())) => Ok(Running {
            thread: handle,
            stop,
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        // The loop thread is left as it is (it holds the interpreter): the worker
        // exits with this error.
        Err(RecvTimeoutError::Timeout) => Err(lifespan::LifespanError::Blocked {
            timeout: lifespan_timeout,
        }
        .into()),
        Err(RecvTimeoutError::Disconnected) => Err(AsgiError::Thread(std::io::Error::other(
            "the event loop thread ended while starting (see the log above)",
        ))),
    }
}

/// What the loop thread tells [`start`] while it sets up.
enum Setup {
    /// The lifespan startup begins (the loop and its executor are made).
    Lifespan,
    /// Ready to serve, or why not.
    Done(Result<(), AsgiError>),
}

/// How long past `--lifespan-timeout` the loop has to report its startup's timeout
/// (it cancels the startup and waits up to a second for it) before the worker decides
/// that a sync call blocks the loop.
pub const STARTUP_GRACE: Duration = Duration::from_secs(3);

impl Running {
    /// The stop began: the requests in flight have until `deadline`
    /// (`--graceful-timeout`), and the tasks the app left running what is left then.
    pub fn stopping(&self, deadline: Instant) {
        self.stop.stopping(deadline);
    }

    /// Waits for the loop thread to finish its requests, up to `limit`
    /// (`--graceful-timeout`), then for lifespan shutdown and the rest of the stop;
    /// requests still running at `limit` are cut off first ([`Stop::join`]). False
    /// when requests were cut off.
    pub fn join(self, limit: Duration) -> bool {
        self.stop.join(self.thread, limit)
    }

    /// The loop's stop, for an immediate stop's cut-off ([`Stop::cut_now`]).
    pub fn stop(&self) -> Arc<Stop> {
        Arc::clone(&self.stop)
    }
}

/// Creates the loop (`--loop`), its default executor (`--threads`, returned), its
/// exception handler and cut-off watch ([`super::stop`]), and runs lifespan startup
/// on it.
fn setup<'py>(
    py: Python<'py>,
    app: &App,
    settings: &Settings,
    asgi: &AsgiSettings,
    stop: &Arc<Stop>,
    answered: &Arc<lifespan::Answered>,
    began: &std::sync::mpsc::Sender<Setup>,
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>, Lifespan), AsgiError> {
    let loop_error = |e: PyErr| AsgiError::Loop {
        option: asgi.event_loop,
        detail: traceback(py, &e),
    };
    let asyncio = py.import("asyncio").map_err(loop_error)?;
    let (module, name) = asgi.event_loop.module(py).map_err(loop_error)?;
    let event_loop = module.call_method0("new_event_loop").map_err(loop_error)?;
    asyncio
        .call_method1("set_event_loop", (&event_loop,))
        .map_err(loop_error)?;
    // Python's own name for the thread (else "Dummy-1" in the app's logs).
    if let Ok(t) = py
        .import("threading")
        .and_then(|m| m.call_method0("current_thread"))
    {
        let _ = t.setattr("name", "python-asgi");
    }
    let executor = py
        .import("concurrent.futures")
        .and_then(|m| {
            let kw = PyDict::new(py);
            kw.set_item("max_workers", settings.threads)?;
            kw.set_item("thread_name_prefix", "python-asgi-executor")?;
            m.getattr("ThreadPoolExecutor")?.call((), Some(&kw))
        })
        .map_err(loop_error)?;
    event_loop
        .call_method1("set_default_executor", (&executor,))
        .map_err(loop_error)?;
    // asyncio's reports (a task's exception nobody retrieved) into postern's log, from
    // lifespan startup on.
    stop::install_exception_handler(py, &event_loop).map_err(loop_error)?;
    stop.watch(py, &event_loop).map_err(loop_error)?;
    tracing::info!(
        event_loop = name,
        executor_threads = settings.threads,
        max_concurrency = asgi.max_concurrency,
        "ASGI: one event loop thread"
    );
    let _ = began.send(Setup::Lifespan);
    let lifespan = lifespan::startup(
        py,
        &event_loop,
        app.0.bind(py),
        asgi.lifespan,
        asgi.lifespan_timeout,
        answered,
    )?;
    Ok((event_loop, executor, lifespan))
}

/// Serves until the source is drained and the last task has ended, or the requests
/// still running at `--graceful-timeout` are cut off (`stop`).
#[allow(clippy::too_many_arguments)]
fn serve(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    app: App,
    settings: Settings,
    asgi: &AsgiSettings,
    source: Arc<dyn Source>,
    lifespan: &Lifespan,
    stop: &Arc<Stop>,
) -> PyResult<()> {
    let Some(fd) = source.wake_fd().map(|f| f.as_raw_fd()) else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the request source has no wake-up fd",
        ));
    };
    let get = |name: &str| -> PyResult<Py<PyAny>> { Ok(event_loop.getattr(name)?.unbind()) };
    let io_executor = {
        let kw = PyDict::new(py);
        kw.set_item("max_workers", IO_THREADS.min(asgi.max_concurrency))?;
        kw.set_item("thread_name_prefix", "python-asgi-io")?;
        py.import("concurrent.futures")?
            .getattr("ThreadPoolExecutor")?
            .call((), Some(&kw))?
    };
    let ctx = Rc::new(Ctx {
        event_loop: event_loop.clone().unbind(),
        // Futures that are coroutines too (`http::waiting_maker`): what send() and
        // receive() return when they wait.
        create_future: super::http::waiting_maker(py, event_loop)?.unbind(),
        run_in_executor: get("run_in_executor")?,
        io_executor: io_executor.clone().unbind(),
        add_reader: get("add_reader")?,
        remove_reader: get("remove_reader")?,
        watch: super::watch::Watch::new(settings.monitor.clone(), asgi.max_concurrency),
        ended: OnceCell::new(),
        done: super::http::ready(py, None)?.unbind(),
        partial: py.import("functools")?.getattr("partial")?.unbind(),
        answered: Cell::new(0),
        gone: super::http::GoneQueue::new()?,
        gone_waiting: RefCell::new(std::collections::HashMap::new()),
        at_cap: Cell::new(false),
        next_id: Cell::new(0),
        stop: Arc::clone(stop),
        timeout: asgi.timeout,
        after: RefCell::new(std::collections::BTreeMap::new()),
        after_due: Cell::new(None),
    });
    let mark = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("eventfd: {e}")))?;
    let driver = Bound::new(
        py,
        Driver {
            source,
            app: app.0,
            mounts: settings.mounts.clone(),
            ctx: Rc::clone(&ctx),
            state: lifespan.state(py).map(Bound::unbind),
            spawn: Spawn::new(py, event_loop)?,
            call_later: get("call_later")?,
            call_soon_threadsafe: get("call_soon_threadsafe")?,
            stop: get("stop")?,
            fd,
            mark,
            max: asgi.max_concurrency,
            in_flight: Cell::new(0),
            full: Cell::new(false),
            reading: Cell::new(false),
            draining: Cell::new(false),
            drained: Cell::new(false),
            timer: RefCell::new(None),
            drain_thread: RefCell::new(None),
            done: Cell::new(false),
            places: Arc::new(Places::default()),
            // SAFETY: with the GIL held; a new reference or NULL with an exception.
            base: unsafe { Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyContext_CopyCurrent())? }
                .unbind(),
        },
    )?;
    let ended = driver.clone().unbind();
    let _ = ctx.ended.set(Box::new(move |py, slot| {
        Driver::ended(ended.bind(py), slot)
    }));
    ctx.add_reader
        .bind(py)
        .call1((ctx.gone.fd.as_raw_fd(), driver.getattr("_gone")?))?;
    // Watched for as long as the loop serves: an event with its number that the loop
    // no longer watched would be reported at every turn (the loop drops only the
    // registration of the fd itself, not the listeners').
    ctx.add_reader
        .bind(py)
        .call1((driver.borrow().mark.as_raw_fd(), driver.getattr("_accept")?))?;
    super::dump::start(
        py,
        event_loop,
        driver.getattr("_dump")?.unbind(),
        asgi.timeout,
    )?;
    // Before the listeners are placed: what can fail here fails before the loop's
    // epoll watches them (review 343: they stayed armed in a loop that never ran).
    let beat = super::beat::Beat::start(py, event_loop, settings.monitor.as_ref(), asgi.timeout)?;
    Driver::resume(&driver)?;
    Driver::place_listeners(&driver, PLACE_TRIES);
    // The loop ends only once the stop is drained. asyncio lets SystemExit and
    // KeyboardInterrupt out of run_forever (a background task or callback of the app
    // raising them), and an app may call loop.stop(): the loop goes on serving, or the
    // worker would stay up answering nothing.
    loop {
        if let Err(e) = event_loop.call_method0("run_forever") {
            tracing::error!(detail = %traceback(py, &e), "a task or callback on the event loop raised this out of the loop; the loop goes on");
        }
        let me = driver.borrow();
        if (me.drained.get() && me.in_flight.get() == 0) || stop.cut_taken() {
            me.done.set(true);
            break;
        }
    }
    if let Some(beat) = beat {
        beat.borrow(py).stop(py);
    }
    let _ = io_executor.call_method1("shutdown", (false,));
    // A drain thread waiting for a place (the loop ended at the cut-off) goes too.
    driver.borrow().places.close();
    if let Some(t) = driver.borrow().drain_thread.borrow_mut().take() {
        py.detach(|| {
            let _ = t.join();
        });
    }
    Ok(())
}

/// The loop's side of serving: takes requests from the source, starts their tasks,
/// counts them against `--max-concurrency`, and stops the loop at the end.
#[pyclass(module = "postern", name = "AsgiDriver", unsendable)]
struct Driver {
    source: Arc<dyn Source>,
    app: Py<PyAny>,
    mounts: Vec<Vec<u8>>,
    ctx: Rc<Ctx>,
    /// What lifespan startup stored: each scope gets a shallow copy.
    state: Option<Py<PyDict>>,
    /// Starts the requests' tasks.
    spawn: Spawn,
    call_later: Py<PyAny>,
    call_soon_threadsafe: Py<PyAny>,
    stop: Py<PyAny>,
    /// The acceptor's epoll.
    fd: RawFd,
    /// The data of the listeners' events in the loop's own epoll
    /// ([`Source::watch_in_loop`]): an eventfd never written, which the loop watches
    /// with `_accept`, so that a listener's wake-up is told from the acceptor epoll's.
    mark: rustix::fd::OwnedFd,
    max: usize,
    in_flight: Cell<usize>,
    /// The last place was taken ([`Source::at_cap`]), none freed since.
    full: Cell<bool>,
    /// The epoll fd is registered with the loop.
    reading: Cell<bool>,
    draining: Cell<bool>,
    /// The source has nothing more (after draining).
    drained: Cell<bool>,
    /// When the source must be looked at again even without an event (a waiting
    /// connection's deadline), and the loop's timer handle for it.
    timer: RefCell<Option<(Instant, Py<PyAny>)>>,
    drain_thread: RefCell<Option<JoinHandle<()>>>,
    /// The loop has stopped serving (lifespan shutdown and the rest follow): a
    /// request the drain thread hands over now is not started.
    done: Cell<bool>,
    /// While draining: the places below `--max-concurrency` the drain thread may take
    /// before it takes another request ([`Places`]).
    places: Arc<Places>,
    /// The loop thread's context when serving began: what the listeners' callbacks
    /// and the requests' tasks start from ([`Driver::in_base`]).
    base: Py<PyAny>,
}

/// Loop turns [`Driver::place_listeners`] looks for the loop's epoll.
const PLACE_TRIES: u32 = 8;

/// The one epoll of this process that watches `fd` with `fd` as its event's data (the
/// event loop's, which watches the acceptor's epoll: asyncio's selector and libuv
/// both key their events by fd): an epoll's `/proc/self/fdinfo` entry has a `tfd:`
/// line for each fd it watches. `None` when none or several do.
fn epoll_holding(fd: RawFd) -> Option<RawFd> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        if n == fd {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        // `tfd: FD events: HEX data: HEX ...`: the fd, with the data an event loop
        // gives it (its number in `data.fd`, the union's first four bytes).
        let holds = text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"tfd:")
                && w.get(1).and_then(|t| t.parse::<RawFd>().ok()) == Some(fd)
                && w.get(4) == Some(&"data:")
                && w.get(5)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .is_some_and(|d| {
                        let b = d.to_ne_bytes();
                        i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) == fd
                    })
        });
        if holds {
            if found.is_some() {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// A request handed from the draining thread to the loop.
#[pyclass(module = "postern", name = "Handoff", frozen)]
struct Handoff(Mutex<Option<Request>>);

/// The free places under `--max-concurrency` while a worker drains its queues at a
/// stop: the drain thread takes one before it takes a request from the source, the
/// loop gives one back as each task ends. So the requests still queued at the stop
/// are served as before it, at most `--max-concurrency` at a time (the others wait in
/// the acceptor's queue, as for a WSGI worker's threads); none is started once
/// `--graceful-timeout` has cut the running ones off.
/// regression: the drain thread handed every queued request to the loop at once
/// (`--max-concurrency 1`, 40 queued connections: 39 tasks in flight).
#[derive(Default)]
struct Places {
    state: Mutex<PlacesState>,
    freed: Condvar,
}

#[derive(Default)]
struct PlacesState {
    free: usize,
    /// The loop has ended: nothing will be given back.
    closed: bool,
}

impl Places {
    fn lock(&self) -> std::sync::MutexGuard<'_, PlacesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the places free when draining begins.
    fn open(&self, free: usize, source: &dyn Source) {
        let mut state = self.lock();
        state.free = free;
        source.spare_places(free);
    }

    /// One place is free again.
    fn give(&self, source: &dyn Source) {
        let mut state = self.lock();
        state.free += 1;
        source.spare_places(state.free);
        self.freed.notify_one();
    }

    /// Waits for a free place and takes it; false once the loop has ended. What is
    /// left free is told to `source` (the stop's share of the listen queues).
    fn take(&self, source: &dyn Source) -> bool {
        let mut state = self.lock();
        loop {
            if state.closed {
                return false;
            }
            if state.free > 0 {
                state.free -= 1;
                source.spare_places(state.free);
                return true;
            }
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }
}

/// Threads (at most) that write to front servers not reading and read spooled or
/// streamed request bodies: one per such request at a time; started as needed.
const IO_THREADS: usize = 64;

/// How often a worker at its `--max-requests` looks for its stop (which its last
/// request's end asked for).
const LIMIT_LOOK: Duration = Duration::from_millis(20);

impl Driver {
    /// Watches the epoll fd again (below the cap) and takes what is ready.
    fn resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.borrow();
        if me.draining.get() || me.reading.get() || me.in_flight.get() >= me.max {
            return Ok(());
        }
        me.ctx.at_cap.set(false);
        // regression: called at a request's end, inside its task's step, the reader's
        // handle (asyncio and uvloop give it a copy of the current context) and the
        // tasks taken here (each copies the current context) got that request's
        // context: its ContextVars were seen by every later request until the next
        // pause (--max-concurrency reached, --max-requests); a FastAPI dependency's
        // user variable leaked into 98 requests of 100 at --max-concurrency 1.
        let base = me.base.clone_ref(py);
        drop(me);
        Self::in_base(py, &base, || {
            let me = slf.borrow();
            me.ctx
                .add_reader
                .bind(py)
                .call1((me.fd, slf.getattr(intern!(py, "_ready"))?))?;
            me.reading.set(true);
            me.source.loop_watches(true);
            drop(me);
            // Not `eager`: a task's end (inside its step) resumes the reading.
            Self::take_ready(slf, false, false);
            Ok(())
        })?
    }

    /// Runs `f` in a fresh copy of `base` (the loop thread's context when serving
    /// began), so that the loop handles and tasks it makes do not start from the
    /// context of the request whose step runs now.
    fn in_base<R>(py: Python<'_>, base: &Py<PyAny>, f: impl FnOnce() -> R) -> PyResult<R> {
        // SAFETY: with the GIL held; `PyContext_Copy` returns a new reference or NULL
        // with an exception; the copy is entered and left on this thread around `f`
        // (balanced: whatever `f` enters, it leaves), so it is the current context
        // when it is left.
        unsafe {
            let ctx = Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyContext_Copy(base.as_ptr()))?;
            if pyo3::ffi::PyContext_Enter(ctx.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
            let r = f();
            if pyo3::ffi::PyContext_Exit(ctx.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
            Ok(r)
        }
    }

    fn pause(&self, py: Python<'_>) {
        if self.reading.replace(false) {
            // The listeners first (their events carry the mark's number, which the loop
            // watches for as long as it serves, so the order is a precaution).
            self.source.loop_watches(false);
            let _ = self.ctx.remove_reader.bind(py).call1((self.fd,));
        }
    }

    /// Takes the next request that is ready and starts its task; `eager`: called by
    /// the loop itself (a loop callback, not inside a task's step), so the task's
    /// first step may run at once ([`Spawn::task`]); `accept`: a listener woke the
    /// loop ([`Source::try_accept`]).
    fn take_ready(slf: &Bound<'_, Self>, eager: bool, accept: bool) {
        crate::forked::guard();
        let py = slf.py();
        {
            let me = slf.borrow();
            if me.draining.get() {
                return;
            }
            if me.in_flight.get() >= me.max {
                if !me.ctx.at_cap.get() {
                    // Woken at the cap: what woke it may be a request on a parked
                    // FastCGI connection, for another worker to serve.
                    me.source.waits_at_cap();
                }
                me.pause(py);
                if !me.ctx.at_cap.replace(true) {
                    let ctx = Rc::clone(&me.ctx);
                    drop(me);
                    super::http::peek_kept(py, &ctx);
                }
                return;
            }
            // --max-requests: no request is taken past the limit (those in flight
            // count), so the worker serves its limit, not up to --max-concurrency more;
            // and it recycles at once (regression: it waited for the last request in
            // flight to end, deaf meanwhile: a long stream kept it so for its whole
            // length). The stop that follows is noticed by looking again now and then:
            // the listeners stay unwatched meanwhile.
            if me.ctx.watch.may_start(me.in_flight.get()) == Some(0) && !me.ctx.watch.has_stopped()
            {
                me.pause(py);
                me.ctx.watch.limit_taken();
                me.look_again_in(py, slf, LIMIT_LOOK);
                return;
            }
            // Paused at that limit, and the master now holds the worker past it (its
            // successor failed to start, or a reload's new workers are starting): it
            // watches its listeners again, not only takes what this look finds.
            // regression (probe 373 HIGH): a look that found nothing left the loop
            // deaf for good (a held worker took no request while the other worker
            // served them all, and its stop waited out --graceful-timeout).
            if !me.reading.get() && !me.ctx.watch.has_stopped() {
                drop(me);
                if let Err(e) = Self::resume(slf) {
                    tracing::error!(detail = %traceback(py, &e), "cannot watch the listeners again");
                    // Looked at again, as at the limit: not deaf for good.
                    slf.borrow().look_again_in(py, slf, LIMIT_LOOK);
                }
                return;
            }
            let found = if accept {
                me.source.try_accept()
            } else {
                me.source.try_next()
            };
            match found {
                TryNext::Ready(req) => {
                    if me.in_flight.get() + 1 >= me.max {
                        // This request takes the last place: the look that follows a
                        // freed place must not favour the listener, and a request on
                        // a parked FastCGI connection meanwhile goes to another worker.
                        me.source.at_cap();
                        me.full.set(true);
                        // And the listeners leave the loop's epoll now: there,
                        // exclusive, a loop at its cap waiting for its tasks' I/O
                        // would take a new connection's one wake-up and not accept.
                        me.source.loop_watches(false);
                    }
                    drop(me);
                    // One request per wake-up: the loop's own epoll (level-triggered)
                    // says whether more is ready, which saves a second epoll_wait on
                    // the acceptor's epoll per request just to learn it is empty.
                    Self::start_request(slf, req, eager);
                }
                TryNext::Empty(wait) => {
                    if let Some(wait) = wait {
                        me.look_again_in(py, slf, wait);
                    }
                }
                TryNext::Draining => {
                    drop(me);
                    Self::begin_drain(slf);
                }
            }
        }
    }

    /// Moves the listeners into the loop's own epoll ([`Source::watch_in_loop`]), found
    /// as the one epoll of the process that holds the acceptor's: an event loop
    /// (uvloop) may register a reader only at its next turn, so this looks again for
    /// `tries` turns.
    fn place_listeners(slf: &Bound<'_, Self>, tries: u32) {
        let py = slf.py();
        let me = slf.borrow();
        if me.draining.get() {
            return;
        }
        // Only while the loop watches the acceptor's epoll: else the one epoll holding
        // it may be postern's own (the FastCGI hand-over's watch at the cap).
        if let Some(ep) = me.reading.get().then(|| epoll_holding(me.fd)).flatten() {
            if me.source.watch_in_loop(ep, me.mark.as_raw_fd()) && !me.reading.get() {
                // Paused meanwhile (at its cap already).
                me.source.loop_watches(false);
            }
            return;
        }
        if tries == 0 {
            tracing::debug!("the event loop's epoll was not found: the listeners stay in the acceptor's epoll, and every idle worker's loop wakes for each connection");
            return;
        }
        let Ok(cb) = slf.getattr(intern!(py, "_place")) else {
            return;
        };
        let _ = me
            .ctx
            .event_loop
            .bind(py)
            .call_method1(intern!(py, "call_soon"), (cb, tries - 1));
    }

    fn look_again_in(&self, py: Python<'_>, slf: &Bound<'_, Self>, wait: Duration) {
        let at = Instant::now() + wait;
        let mut timer = self.timer.borrow_mut();
        if let Some((when, _)) = &*timer {
            if *when <= at {
                return;
            }
        }
        if let Some((_, h)) = timer.take() {
            let _ = h.bind(py).call_method0(intern!(py, "cancel"));
        }
        // In the loop's own context, not that of a request whose step may run now.
        let handle = slf.getattr(intern!(py, "_timer")).and_then(|cb| {
            let kw = PyDict::new(py);
            kw.set_item(
                intern!(py, "context"),
                self.base.bind(py).call_method0(intern!(py, "copy"))?,
            )?;
            self.call_later
                .bind(py)
                .call((wait.as_secs_f64() + 0.001, cb), Some(&kw))
        });
        match handle {
            Ok(h) => *timer = Some((at, h.unbind())),
            Err(e) => {
                tracing::error!(detail = %traceback(py, &e), "cannot set the event loop's timer")
            }
        }
    }

    /// Starts the task of one request (`eager`: see [`Self::take_ready`]).
    fn start_request(slf: &Bound<'_, Self>, mut req: Request, eager: bool) {
        let py = slf.py();
        let me = slf.borrow();
        let protocol = req.listener.protocol;
        let slot = me.ctx.watch.begin(&req.head, &req.request_id, protocol);
        me.in_flight.set(me.in_flight.get() + 1);
        let span = std::mem::replace(&mut req.span, crate::logging::RequestSpan::none());
        let entered = span.enter();
        let state = me.state.as_ref().map(|s| s.bind(py).clone());
        let scope =
            scope::build_with_method(py, &req.head, &req.listener, &me.mounts, state.as_ref());
        // A refused request is answered without the app, never as a HEAD.
        let is_head = scope.as_ref().is_ok_and(|(_, head)| *head);
        drop(entered);
        let app = me.app.clone_ref(py);
        let ctx = Rc::clone(&me.ctx);
        drop(me);
        let exchange = match Bound::new(py, Exchange::new(ctx, req, span.clone(), slot, is_head)) {
            Ok(x) => x,
            Err(e) => {
                let _e = span.enter();
                tracing::error!(detail = %traceback(py, &e), "internal error: cannot start the request");
                drop(_e);
                slf.borrow().ctx.watch.end(slot, protocol, None);
                Self::ended(slf, slot);
                return;
            }
        };
        let _entered = span.enter();
        let scope = match scope {
            Ok((s, _)) => s,
            Err(refusal) => {
                // A 400 is the peer's input: a flood is summed up by the bad-input
                // limit (a 500, a failed allocation, is always said).
                // regression (hostile): 100 requests without REQUEST_METHOD were 100
                // WARN lines.
                use crate::server::slow_clients::{self, Reason};
                if refusal.status != 400
                    || slow_clients::bad_input_on(None, span.peer(), Reason::Malformed, false)
                {
                    tracing::warn!(status = refusal.status, reason = %refusal.reason, "the request cannot be described as an ASGI scope; answered without the app");
                }
                if let Err(e) = Exchange::answer_refusal(&exchange, refusal.status) {
                    tracing::error!(detail = %traceback(py, &e), "internal error answering a refused request");
                }
                return;
            }
        };
        let coro = (|| -> PyResult<Bound<'_, PyAny>> {
            let (receive, send) = super::http::channel(&exchange)?;
            let coro = app.bind(py).call1((scope, receive, send))?;
            super::serve::wrap(coro, &exchange)
        })();
        // The task is made outside the span: an app's task factory may run its first
        // step at once (asyncio.eager_task_factory), and that step may end the
        // request and take the next ones (see `Exchange::end_with`).
        drop(_entered);
        let started = coro.and_then(|coro| slf.borrow().spawn.task(coro, eager));
        match started {
            Ok(Some(first)) => first.run(py, &exchange),
            Ok(None) => {}
            Err(e) => {
                // Not in the request's span: its end may take the next requests
                // (see `Exchange::end_with`), which enters it itself.
                if let Err(e) = Exchange::end_with(&exchange, Some(e)) {
                    let _entered = span.enter();
                    tracing::error!(detail = %traceback(py, &e), "internal error ending a request");
                }
            }
        }
    }

    /// The acceptor stopped accepting: what is left comes from its blocking `next`,
    /// on a thread of its own that hands each request to the loop.
    fn begin_drain(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let me = slf.borrow();
        if me.draining.replace(true) {
            return;
        }
        me.pause(py);
        if let Some((_, h)) = me.timer.borrow_mut().take() {
            let _ = h.bind(py).call_method0(intern!(py, "cancel"));
        }
        let source = Arc::clone(&me.source);
        me.places
            .open(me.max.saturating_sub(me.in_flight.get()), &*me.source);
        let places = Arc::clone(&me.places);
        let call = me.call_soon_threadsafe.clone_ref(py);
        let deliver = match slf.getattr(intern!(py, "_deliver")) {
            Ok(d) => d.unbind(),
            Err(_) => return,
        };
        let spawned = std::thread::Builder::new()
            .name("python-asgi-drain".into())
            .spawn(move || {
                Python::attach(|py| loop {
                    // A place first: the request taken next starts at once.
                    let next = py.detach(|| places.take(&*source).then(|| source.next()).flatten());
                    let last = next.is_none();
                    let handoff = Handoff(Mutex::new(next));
                    if let Err(e) = Py::new(py, handoff)
                        .and_then(|h| call.bind(py).call1((deliver.bind(py), h)))
                    {
                        // The loop is closed (stopped past --graceful-timeout).
                        tracing::debug!(error = %e, "a drained request could not reach the event loop");
                        return;
                    }
                    if last {
                        return;
                    }
                })
            });
        match spawned {
            Ok(t) => *me.drain_thread.borrow_mut() = Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the draining thread; requests still queued are not served");
                me.drained.set(true);
                drop(me);
                Self::maybe_stop(slf);
            }
        }
    }

    /// A request's task has ended and its response is finished.
    fn ended(slf: &Bound<'_, Self>, _task: usize) {
        let py = slf.py();
        {
            let me = slf.borrow();
            me.in_flight.set(me.in_flight.get().saturating_sub(1));
            if me.ctx.stop.cut_taken() {
                // Cut off at --graceful-timeout: nothing more is started (what still
                // waits is counted and said by the stop).
                me.places.close();
            } else if me.draining.get() && me.in_flight.get() < me.max {
                me.places.give(&*me.source);
            }
            if me.full.get() && me.in_flight.get() < me.max {
                me.full.set(false);
                me.source.below_cap();
                // Back in the loop's epoll (a paused loop's `resume` does it).
                if me.reading.get() && !me.draining.get() {
                    me.source.loop_watches(true);
                }
            }
        }
        crate::logging::write_deferred();
        if slf.borrow().draining.get() {
            Self::maybe_stop(slf);
        } else if let Err(e) = Self::resume(slf) {
            tracing::error!(detail = %traceback(py, &e), "cannot watch the listeners again");
        }
    }

    fn maybe_stop(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let me = slf.borrow();
        if me.drained.get() && me.in_flight.get() == 0 {
            let _ = me.stop.bind(py).call0();
        }
    }
}

#[pymethods]
impl Driver {
    /// The epoll fd is readable.
    fn _ready(slf: &Bound<'_, Self>) {
        Self::take_ready(slf, true, false);
    }

    /// A listener in the loop's own epoll is readable ([`Driver::mark`]).
    fn _accept(slf: &Bound<'_, Self>) {
        Self::take_ready(slf, true, true);
    }

    /// A waiting connection's deadline: look at the source again.
    fn _timer(slf: &Bound<'_, Self>) {
        slf.borrow().timer.borrow_mut().take();
        Self::take_ready(slf, true, false);
    }

    /// The master's SIGUSR2 (`--timeout`, `--slow-log`), from the dump thread when no
    /// task blocks the loop: log every task's stack.
    fn _dump(slf: &Bound<'_, Self>) {
        let py = slf.py();
        super::dump::log_tasks(py, slf.borrow().ctx.event_loop.bind(py));
    }

    /// Sinks said their front server went away (FastCGI).
    fn _gone(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let ctx = Rc::clone(&slf.borrow().ctx);
        for id in ctx.gone.take() {
            let ex = ctx.gone_waiting.borrow().get(&id).map(|e| e.clone_ref(py));
            if let Some(ex) = ex {
                let mut ex = ex.bind(py).borrow_mut();
                ex.set_gone(py);
            }
        }
    }

    /// See [`Driver::place_listeners`].
    fn _place(slf: &Bound<'_, Self>, tries: u32) {
        Self::place_listeners(slf, tries);
    }

    /// A request (or the end) from the draining thread.
    fn _deliver(slf: &Bound<'_, Self>, handoff: &Bound<'_, Handoff>) {
        let req = handoff
            .get()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match req {
            Some(req) if slf.borrow().done.get() || slf.borrow().ctx.stop.cut_taken() => {
                // Taken just before the cut-off, or arriving once serving is over
                // (during lifespan shutdown): not started, as none of those still
                // waiting are. Its connection closes with the process, as theirs do,
                // quietly: dropped here, its unfinished response would be logged as an
                // internal error (and a TCP connection reset).
                {
                    let _entered = req.span.enter();
                    let by = slf.borrow().ctx.stop.cut_says().to_owned();
                    tracing::warn!("not started: cut off {by} before its turn (its connection closes without an answer)");
                }
                std::mem::forget(req);
            }
            Some(req) => Self::start_request(slf, req, true),
            None => {
                slf.borrow().drained.set(true);
                Self::maybe_stop(slf);
            }
        }
    }
}

/// Starts a request's task. Without a task factory on the loop (an app may set one),
/// `asyncio.Task(coro, loop=loop, name=...)` is called directly, as `type.__call__`
/// does it (the type's `tp_new`, then its `tp_init`), with a keyword dict made once:
/// the loop's `create_task` would add its own call (uvloop's) or a Python frame
/// (asyncio's), an unnamed Task formats a `Task-N` name per request on Python 3.11
/// (a request's task is named by its exchange in the `--timeout` dump, not by this),
/// and a call with keywords makes a keyword dict per call (3.11's `Task` has no
/// vectorcall: `_PyStack_AsDict`, about 0.7k instructions with its teardown).
///
/// When the loop itself takes the request (`eager`), the task's first step runs at
/// once, in that callback, as Python 3.12's eager tasks do (3.11's `Task` has no such
/// option): see [`Eager`]. A request whose app answers without waiting (a hello, a
/// cached page) then ends in the callback that accepted it.
struct Spawn {
    /// `asyncio.Task`: the C `_asyncio.Task` unless something replaced it.
    task: Py<PyAny>,
    /// `task` is the C `_asyncio.Task` itself, whose slots are called directly. A
    /// replacement (a factory function, a subclass, a class whose metaclass hooks
    /// construction: instrumentation does this) is called as Python calls it.
    c_task: bool,
    get_task_factory: Py<PyAny>,
    create_task: Py<PyAny>,
    /// `{"loop": loop, "name": TASK_NAME}`, never handed to Python code: `Task`'s
    /// `tp_init` only reads it (Argument Clinic's keyword parsing).
    kwargs: Py<PyDict>,
    /// `None` when the loop or asyncio cannot be shadowed (no instance `__dict__`).
    eager: Option<Eager>,
}

impl Spawn {
    fn new(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Spawn> {
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), event_loop)?;
        kwargs.set_item(intern!(py, "name"), PyString::intern(py, TASK_NAME))?;
        let task = py.import("asyncio")?.getattr("Task")?;
        let c_task = py
            .import("_asyncio")
            .and_then(|m| m.getattr("Task"))
            .is_ok_and(|c| c.is(&task) && task.is_exact_instance_of::<PyType>());
        Ok(Spawn {
            task: task.unbind(),
            c_task,
            get_task_factory: event_loop.getattr("get_task_factory")?.unbind(),
            create_task: event_loop.getattr("create_task")?.unbind(),
            kwargs: kwargs.unbind(),
            eager: if c_task {
                Eager::new(py, event_loop)?
            } else {
                None
            },
        })
    }

    /// Makes the task of `coro`; with `eager`, its first step is returned to be run
    /// (by the caller, out of the request's span, as the loop runs a step).
    fn task(&self, coro: Bound<'_, PyAny>, eager: bool) -> PyResult<Option<FirstStep>> {
        let py = coro.py();
        if !self.get_task_factory.bind(py).call0()?.is_none() {
            // Named as every request's task, once made: asked of `create_task`, the
            // name reaches the factory itself on newer Pythons (a `(loop, coro)`
            // factory then fails). A factory may wrap the coroutine (sentry_sdk's
            // does): the stop finds the request down its awaits (stop.py's `_serve`).
            let task = self.create_task.bind(py).call1((coro,))?;
            if let Ok(set_name) = task.getattr(intern!(py, "set_name")) {
                set_name.call1((PyString::intern(py, TASK_NAME),))?;
            }
            return Ok(None);
        }
        let args = PyTuple::new(py, [coro])?;
        let kwargs = self.kwargs.bind(py);
        let task = self.task.bind(py);
        let tp = match task.cast::<PyType>() {
            Ok(t) if self.c_task => t.as_type_ptr(),
            _ => {
                // A copy: the kept dict is never handed to Python code.
                task.call(args, Some(&kwargs.copy()?))?;
                return Ok(None);
            }
        };
        // SAFETY: with the GIL held. `tp` is `asyncio.Task`, a static C type (not
        // abi3: its slots are read directly); `tp_new` returns a new reference or NULL
        // with an exception, `tp_init` 0 or -1 with an exception, as `type.__call__`
        // uses them (`args` and `kwargs` are borrowed for the calls; `Task.__new__`
        // always returns a Task, so `tp_init` always runs, as there).
        unsafe {
            let (Some(new), Some(init)) = ((*tp).tp_new, (*tp).tp_init) else {
                task.call(args, Some(kwargs))?;
                return Ok(None);
            };
            let task = Bound::from_owned_ptr_or_err(py, new(tp, args.as_ptr(), kwargs.as_ptr()))?;
            let eager = self.eager.as_ref().filter(|_| eager);
            let eager = eager.filter(|e| e.arm(&task));
            // Fetched before the shadows' catch is taken back (as when the shadow was
            // taken off, which looked the attribute up: nothing runs with `init`'s
            // exception set).
            let failed =
                (init(task.as_ptr(), args.as_ptr(), kwargs.as_ptr()) < 0).then(|| PyErr::fetch(py));
            let caught = eager.map(Eager::disarm);
            if let Some(e) = failed {
                return Err(e);
            }
            let (Some(e), Some(caught)) = (eager, caught) else {
                return Ok(None);
            };
            // The registration kept back, made here the short way.
            let registered = match &e.tasks {
                Some(reg) if caught.added => Some((reg.register(&task)?.unbind(), Rc::clone(reg))),
                _ => None,
            };
            Ok(caught.step.map(|(step, context)| FirstStep {
                task: task.unbind(),
                step,
                context,
                registered,
                call_soon: e.call_soon_real.clone_ref(py),
            }))
        }
    }
}

/// The name of every request's task (`asyncio.current_task().get_name()`).
const TASK_NAME: &str = "postern-request";

/// Runs a request task's first step at once. 3.11's `Task.__init__` ends with
/// `loop.call_soon(step, context=ctx)` (the first step, on a later loop iteration)
/// and `_all_tasks.add(task)` (asyncio's `WeakSet` of tasks), both looked up as
/// attributes. An instance attribute on the loop shadows its `call_soon` with a
/// built-in of postern's, which keeps the step of the task being made; it is put on
/// at the first request's task and left on (putting it on and off per request cost a
/// dict insertion, a lookup and a deletion, and the loop dict's resizes that the
/// deletions' dummies caused: about 0.4k instructions); the `WeakSet`'s `add` is
/// shadowed the same way from the loop's start on (the set is asyncio's own), and
/// keeps back the registration of that task only. Anything else either is given goes on, as
/// before (the app's tasks, other threads' loops): to the set's `add`, and to the loop's
/// class's `call_soon` looked up at the call (a class-level patch made since is honoured). The step then runs at once in the task's context
/// ([`FirstStep`]), as the loop would run it, with the task entered as the current
/// one (the step does that itself). The task is registered before the step as
/// `WeakSet.add` does it, without its Python frame ([`Registry`]), and a task already
/// done after the step (its app answered without waiting) is taken out of the set
/// there and then, before the weakref's callback (a Python frame too) would do it at
/// the task's end: `all_tasks()` leaves done tasks out anyway. That saves per request
/// the `call_soon` (1.4k instructions: a handle, the idle watcher), the loop
/// iteration that runs the step, and most of the registration (2.1k for the add,
/// 1.2k for the callback). An instance attribute the app set itself (a `call_soon`
/// of its own on the loop) turns this off, and the loop's step then runs as before.
struct Eager {
    /// The loop's instance `__dict__`.
    loop_dict: Py<PyDict>,
    /// asyncio's `WeakSet` of tasks; `None` where there is no such `WeakSet` as 3.11's
    /// (3.12 renamed it): the task is then registered as usual.
    tasks: Option<Rc<Registry>>,
    /// The loop's real `call_soon` (bound).
    call_soon_real: Py<PyAny>,
    /// The shadow: a built-in bound to the loop ([`catch_soon`]), left on the loop
    /// once put on: outside the making of a request's task it passes every call on to
    /// the loop's class's `call_soon`, looked up at the call, so `loop.call_soon(...)`
    /// does what it did, a patch of the class's method made since included (a C
    /// future's callbacks find it in the instance dict where they made a bound method:
    /// no dearer). Its `__self__` is the loop and it has a text signature, so
    /// `inspect.signature(loop.call_soon)` is `(callback, *args, context=None)`.
    catch_soon: Py<PyAny>,
    call_soon_name: Py<PyString>,
}

/// What the shadows kept while a task was made ([`Eager`]).
struct Caught {
    /// The task being made (compared, never dereferenced); null when not armed.
    task: *mut pyo3::ffi::PyObject,
    /// Its first step and the context to run it in.
    step: Option<(Py<PyAny>, Py<PyAny>)>,
    /// Its registration was kept back.
    added: bool,
}

thread_local! {
    /// The loop thread's [`Caught`]; the shadows pass every other thread's calls on.
    static CAUGHT: RefCell<Caught> = const {
        RefCell::new(Caught { task: std::ptr::null_mut(), step: None, added: false })
    };
    /// The loop's `call_soon` as it was at the start (bound; [`Eager::new`]), and
    /// whether [`catch_soon`] is passing a call on to the class's `call_soon` now: a
    /// call that comes back to the shadow meanwhile (a class-level wrapper that calls
    /// the `loop.call_soon` it took from the loop, as `mock.patch.object(type(loop),
    /// "call_soon", wraps=loop.call_soon)` does) goes to the start's method instead of
    /// to the class again, which would recurse without end.
    static PASSING: RefCell<(Option<Py<PyAny>>, bool)> = const { RefCell::new((None, false)) };
}

impl Eager {
    fn new(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Eager>> {
        let dict_of = |o: &Bound<'_, PyAny>| -> Option<Py<PyDict>> {
            Some(
                o.getattr("__dict__")
                    .ok()?
                    .cast_into::<PyDict>()
                    .ok()?
                    .unbind(),
            )
        };
        let Some(loop_dict) = dict_of(event_loop) else {
            return Ok(None);
        };
        let call_soon_real = event_loop.getattr("call_soon")?;
        PASSING.with(|p| p.borrow_mut().0 = Some(call_soon_real.clone().unbind()));
        Ok(Some(Eager {
            loop_dict,
            tasks: Registry::new(py)?.map(Rc::new),
            catch_soon: super::http::builtin(py, &CATCH_SOON, event_loop)?.unbind(),
            call_soon_real: call_soon_real.unbind(),
            call_soon_name: PyString::intern(py, "call_soon").unbind(),
        }))
    }

    /// Arms the shadow for the making of `task` (putting it on if it is not there yet,
    /// else a lookup); false when it could not be (the app's own `call_soon` attribute
    /// is there: set before the first request, or over the shadow since).
    fn arm(&self, task: &Bound<'_, PyAny>) -> bool {
        let py = task.py();
        if !shadow(py, &self.loop_dict, &self.call_soon_name, &self.catch_soon) {
            return false;
        }
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            c.task = task.as_ptr();
            c.step = None;
            c.added = false;
        });
        true
    }

    /// Returns what the shadows kept; they pass every call on until armed again.
    fn disarm(&self) -> Caught {
        CAUGHT.with(|c| {
            std::mem::replace(
                &mut *c.borrow_mut(),
                Caught {
                    task: std::ptr::null_mut(),
                    step: None,
                    added: false,
                },
            )
        })
    }
}

/// asyncio's `WeakSet` of tasks (`asyncio.tasks._all_tasks`, what `all_tasks()`
/// reads), registered into as its `add` does (`self.data.add(ref(item,
/// self._remove))`, after committing the removals an iteration held back), without
/// the Python frame: these attributes are made in `WeakSet.__init__` and never
/// replaced (`clear()` empties `data`). Only an exact `WeakSet` whose `add` is the
/// standard library's is used so.
struct Registry {
    /// The shadow of `add` in the set's instance `__dict__` ([`catch_add`]).
    _catch_add: Py<PyAny>,
    /// `data` (the set of weak references), `_remove` (their callback),
    /// `_pending_removals`, `_iterating`, `_commit_removals` (bound).
    data: Py<PySet>,
    remove: Py<PyAny>,
    pending_removals: Py<PyList>,
    iterating: Py<PySet>,
    commit_removals: Py<PyAny>,
}

impl Registry {
    /// Finds the set and puts the shadow of its `add` on; `None` when the set is not
    /// 3.11's standard one or has an `add` attribute of its own already.
    fn new(py: Python<'_>) -> PyResult<Option<Registry>> {
        let found = (|| {
            let set = py
                .import("asyncio.tasks")
                .ok()?
                .getattr("_all_tasks")
                .ok()?;
            let weakset = py.import("_weakrefset").ok()?.getattr("WeakSet").ok()?;
            let add = set.getattr("add").ok()?;
            let standard = set.get_type().is(&weakset)
                && add
                    .getattr("__func__")
                    .and_then(|f| f.getattr("__module__"))
                    .is_ok_and(|m| m.eq("_weakrefset").unwrap_or(false));
            if !standard {
                return None;
            }
            let get = |name: &str| set.getattr(name).ok();
            Some((
                get("__dict__")?.cast_into::<PyDict>().ok()?.unbind(),
                add,
                get("data")?.cast_into_exact::<PySet>().ok()?.unbind(),
                get("_remove")?.unbind(),
                get("_pending_removals")?
                    .cast_into_exact::<PyList>()
                    .ok()?
                    .unbind(),
                get("_iterating")?.cast_into_exact::<PySet>().ok()?.unbind(),
                get("_commit_removals")?.unbind(),
            ))
        })();
        let Some((dict, add, data, remove, pending_removals, iterating, commit_removals)) = found
        else {
            return Ok(None);
        };
        let catch = super::http::builtin(py, &CATCH_ADD, &add)?.unbind();
        if !shadow(py, &dict, &PyString::intern(py, "add").unbind(), &catch) {
            return Ok(None);
        }
        Ok(Some(Registry {
            _catch_add: catch,
            data,
            remove,
            pending_removals,
            iterating,
            commit_removals,
        }))
    }

    /// Registers `task`: returns the weak reference now in the set.
    fn register<'py>(&self, task: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = task.py();
        if !self.pending_removals.bind(py).is_empty() {
            self.commit_removals.bind(py).call0()?;
        }
        // SAFETY: with the GIL held; `task` supports weak references (a Task), the
        // callback is the set's own; the result is a new reference or NULL.
        let weak = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyWeakref_NewRef(task.as_ptr(), self.remove.as_ptr()),
            )?
        };
        self.data.bind(py).add(&weak)?;
        Ok(weak)
    }

    /// Takes a task that is done out of the set at once, as its weakref's callback
    /// will (which then never runs: the reference dies here), unless the set is being
    /// iterated (the callback then defers it, as it always did).
    fn unregister(&self, py: Python<'_>, weak: &Bound<'_, PyAny>) {
        if self.iterating.bind(py).is_empty() {
            let _ = self.data.bind(py).discard(weak);
        }
    }
}

/// Sets `dict[name] = shadow` unless `name` is there: whether it is `shadow` now.
fn shadow(py: Python<'_>, dict: &Py<PyDict>, name: &Py<PyString>, shadow: &Py<PyAny>) -> bool {
    // SAFETY: with the GIL held; all three are valid; the result is borrowed (or NULL
    // with an exception, taken here).
    let now =
        unsafe { pyo3::ffi::PyDict_SetDefault(dict.as_ptr(), name.as_ptr(), shadow.as_ptr()) };
    if now.is_null() {
        drop(PyErr::take(py));
        return false;
    }
    now == shadow.as_ptr()
}

static CATCH_SOON: super::http::MethodDef = super::http::MethodDef::new(pyo3::ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: catch_soon,
    },
    ml_flags: pyo3::ffi::METH_FASTCALL | pyo3::ffi::METH_KEYWORDS,
    ml_doc: c"call_soon($self, /, callback, *args, context=None)\n--\n\n\
Arrange for a callback to be called as soon as possible: type(loop).call_soon, \
through postern's shadow (which keeps a request task's first step)."
        .as_ptr(),
});

static CATCH_ADD: super::http::MethodDef = super::http::MethodDef::new(pyo3::ffi::PyMethodDef {
    ml_name: c"add".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunction: catch_add,
    },
    ml_flags: pyo3::ffi::METH_O,
    ml_doc: c"postern's shadow of asyncio's _all_tasks.add while a request's task is made."
        .as_ptr(),
});

/// The shadow of `loop.call_soon` ([`Eager`]): keeps `call_soon(step, context=ctx)`
/// for the task being made, passes anything else on ([`call_soon_of_class`]).
unsafe extern "C" fn catch_soon(
    event_loop: *mut pyo3::ffi::PyObject,
    args: *const *mut pyo3::ffi::PyObject,
    nargs: pyo3::ffi::Py_ssize_t,
    kwnames: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    use pyo3::ffi;
    // SAFETY: CPython calls it with the GIL held, `args` holding `nargs` positional
    // arguments then one value per name in `kwnames` (a tuple of str, or NULL).
    unsafe {
        if nargs == 1
            && !kwnames.is_null()
            && ffi::PyTuple_GET_SIZE(kwnames) == 1
            && ffi::PyUnicode_CompareWithASCIIString(
                ffi::PyTuple_GET_ITEM(kwnames, 0),
                c"context".as_ptr(),
            ) == 0
        {
            let py = Python::assume_attached();
            let kept = CAUGHT.with(|c| match c.try_borrow_mut() {
                Ok(mut c) if !c.task.is_null() && c.step.is_none() => {
                    c.step = Some((
                        Bound::from_borrowed_ptr(py, *args).unbind(),
                        Bound::from_borrowed_ptr(py, *args.add(1)).unbind(),
                    ));
                    true
                }
                _ => false,
            });
            if kept {
                return py.None().into_ptr();
            }
        }
        // Back here from the class's call_soon: the start's method (see PASSING).
        let again = PASSING.with(|p| {
            let mut p = p.borrow_mut();
            if p.1 {
                p.0.as_ref().map(|real| real.as_ptr())
            } else {
                p.1 = true;
                None
            }
        });
        if let Some(real) = again {
            // Borrowed from PASSING, which holds it for the thread's life: a reference
            // is taken for the time of the call all the same.
            ffi::Py_INCREF(real);
            let r = ffi::PyObject_Vectorcall(real, args, nargs as usize, kwnames);
            ffi::Py_DECREF(real);
            return r;
        }
        struct Passed;
        impl Drop for Passed {
            fn drop(&mut self) {
                PASSING.with(|p| p.borrow_mut().1 = false);
            }
        }
        let _passed = Passed;
        call_soon_of_class(event_loop, args, nargs, kwnames)
    }
}

extern "C" {
    /// CPython's lookup of a name along a type's MRO (through its method cache): a
    /// borrowed reference, or NULL without an exception set. Exported by every
    /// CPython 3 (`Include/cpython/object.h`); pyo3-ffi leaves it out as private.
    fn _PyType_Lookup(
        tp: *mut pyo3::ffi::PyTypeObject,
        name: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// `event_loop.call_soon(*args)` as it would be without the shadow in the loop's
/// instance dict: the class's `call_soon` (looked up now, so a class-level patch made
/// after the start, as tracing libraries make them, is what runs), bound to the loop.
///
/// # Safety
/// With the GIL held, as [`catch_soon`] is called.
unsafe fn call_soon_of_class(
    event_loop: *mut pyo3::ffi::PyObject,
    args: *const *mut pyo3::ffi::PyObject,
    nargs: pyo3::ffi::Py_ssize_t,
    kwnames: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    use pyo3::ffi;
    // SAFETY: with the GIL held; `args` holds `nargs` positional arguments then one
    // per name in `kwnames`; the attribute is borrowed from the type's dict, so a
    // reference is taken for the time of the call (the call may replace it).
    unsafe {
        let py = Python::assume_attached();
        let tp = ffi::Py_TYPE(event_loop);
        let attr = _PyType_Lookup(tp, intern!(py, "call_soon").as_ptr());
        if attr.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_AttributeError,
                c"the event loop's class has no call_soon".as_ptr(),
            );
            return std::ptr::null_mut();
        }
        ffi::Py_INCREF(attr);
        let attr_tp = ffi::Py_TYPE(attr);
        let r = if (*attr_tp).tp_flags & ffi::Py_TPFLAGS_METHOD_DESCRIPTOR != 0 {
            // A function or a method descriptor (uvloop's): binding it to the loop
            // and calling the result is calling it with the loop first.
            let nkw = if kwnames.is_null() {
                0
            } else {
                ffi::PyTuple_GET_SIZE(kwnames) as usize
            };
            let all = std::slice::from_raw_parts(args, nargs as usize + nkw);
            let mut small = [std::ptr::null_mut(); 8];
            let mut large = Vec::new();
            let stack = if all.len() < small.len() {
                &mut small[..=all.len()]
            } else {
                large.resize(all.len() + 1, std::ptr::null_mut());
                &mut large[..]
            };
            stack[0] = event_loop;
            stack[1..].copy_from_slice(all);
            ffi::PyObject_Vectorcall(attr, stack.as_ptr(), nargs as usize + 1, kwnames)
        } else if let Some(get) = (*attr_tp).tp_descr_get {
            let bound = get(attr, event_loop, tp.cast());
            if bound.is_null() {
                std::ptr::null_mut()
            } else {
                let r = ffi::PyObject_Vectorcall(bound, args, nargs as usize, kwnames);
                ffi::Py_DECREF(bound);
                r
            }
        } else {
            ffi::PyObject_Vectorcall(attr, args, nargs as usize, kwnames)
        };
        ffi::Py_DECREF(attr);
        r
    }
}

/// The shadow of `_all_tasks.add` ([`Eager`]): keeps back the registration of the
/// task being made, passes anything else on to `real` (the `WeakSet`'s method).
unsafe extern "C" fn catch_add(
    real: *mut pyo3::ffi::PyObject,
    item: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `item` a borrowed reference.
    unsafe {
        let kept = CAUGHT.with(|c| match c.try_borrow_mut() {
            Ok(mut c) if !c.task.is_null() && c.task == item && !c.added => {
                c.added = true;
                true
            }
            _ => false,
        });
        if kept {
            return Python::assume_attached().None().into_ptr();
        }
        pyo3::ffi::PyObject_CallOneArg(real, item)
    }
}

/// A request task's first step, kept by [`Eager`], to run at once.
struct FirstStep {
    task: Py<PyAny>,
    /// The task's step callable, and the context asyncio would run it in.
    step: Py<PyAny>,
    context: Py<PyAny>,
    /// Its weak reference in asyncio's set, when postern registered it.
    registered: Option<(Py<PyAny>, Rc<Registry>)>,
    /// The loop's real `call_soon`, should the step not run here.
    call_soon: Py<PyAny>,
}

impl FirstStep {
    /// Runs the step as the loop runs a callback (in its context, an exception from
    /// it reported), then takes the task out of asyncio's set if it is done: when the
    /// request's end ran in the step (`_end`, [`Exchange::task_over`]), `SERVE` has
    /// returned or raised with it, so the task is done; asking the task (`done()`, a
    /// method lookup and call, about 200 instructions) is left for the rare case where
    /// the exchange is borrowed.
    fn run(self, py: Python<'_>, exchange: &Bound<'_, Exchange>) {
        let step = self.step.bind(py);
        let context = self.context.bind(py);
        // SAFETY: with the GIL held; `context` is the task's `contextvars.Context`
        // (a new copy, entered by nobody), entered and left around the call as the
        // loop's handle does; the call's result is a new reference or NULL.
        let failure = unsafe {
            if pyo3::ffi::PyContext_Enter(context.as_ptr()) < 0 {
                let e = PyErr::fetch(py);
                tracing::debug!(error = %e, "a request task's context could not be entered; its first step is left to the loop");
                let kw = PyDict::new(py);
                let scheduled = kw
                    .set_item(intern!(py, "context"), context)
                    .and_then(|()| self.call_soon.bind(py).call((step,), Some(&kw)));
                if let Err(e) = scheduled {
                    tracing::error!(detail = %traceback(py, &e), "internal error: a request's task could not be scheduled");
                }
                None
            } else {
                let r = pyo3::ffi::PyObject_CallNoArgs(step.as_ptr());
                let failure = if r.is_null() {
                    Some(PyErr::fetch(py))
                } else {
                    pyo3::ffi::Py_DECREF(r);
                    None
                };
                if pyo3::ffi::PyContext_Exit(context.as_ptr()) < 0 {
                    drop(PyErr::take(py));
                }
                failure
            }
        };
        if let Some(e) = failure {
            // What the loop reports of a callback that raised (asyncio's task steps
            // raise only for their own faults: the app's exceptions are the task's).
            tracing::error!(detail = %traceback(py, &e), "a request task's first step raised");
        }
        if let Some((weak, reg)) = self.registered {
            let done = match exchange.try_borrow() {
                Ok(ex) => ex.task_over(),
                Err(_) => self
                    .task
                    .bind(py)
                    .call_method0(intern!(py, "done"))
                    .and_then(|d| d.is_truthy())
                    .unwrap_or(false),
            };
            if done {
                reg.unregister(py, weak.bind(py));
            }
        }
    }
}
