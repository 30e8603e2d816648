//! The end of a worker's event loop, and asyncio's own error reports.
//!
//! - **The order at a stop** (`run::start`): the requests in flight finish, then
//!   lifespan shutdown runs (up to `--lifespan-timeout`), then the tasks the app left
//!   running (started with `asyncio.ensure_future` and never awaited) are cancelled and
//!   the loop runs until they have ended, so their `finally:` blocks run (as
//!   `asyncio.run` does), then the async generators are closed and the default
//!   executor's jobs waited for, each bounded ([`finish`]).
//! - **A cut-off** ([`Stop`]): at `--graceful-timeout` with requests still running,
//!   [`Stop::join`] (on the thread that waits for the loop) writes an eventfd the loop
//!   watches; the loop cancels the requests' tasks (they are cut off), gives them
//!   [`CUT_GRACE`] to end, and lifespan shutdown still runs. The worker then exits as
//!   for any cut-off (code 1). A loop blocked in a sync call cannot take the cut-off:
//!   after [`TAKE_WAIT`] the worker exits without its shutdown.
//! - **A loop stuck after serving** (in lifespan shutdown, or in the `finally:` of a
//!   task the app left running): each step promises a bound; past it the worker exits
//!   without waiting, with a warning that names the step, and no request was cut off
//!   by that (code 0 unless the cut-off above happened).
//! - **asyncio's error reports** ("Task exception was never retrieved", "Exception in
//!   callback ...") go through `tracing` at error level ([`install_exception_handler`]),
//!   so they are in `--log-file` and in JSON with `--log-format json`, with what
//!   asyncio's default handler shows and the name of the task (a request's task is
//!   named after its request).
//!
//! The master waits [`past_graceful`] beyond `--graceful-timeout` before it kills a
//! stopping worker, so the shutdown after a cut-off has its chance.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyTuple};

use super::lifespan::LifespanMode;
use crate::wsgi::traceback;

/// How long the requests' tasks cancelled at `--graceful-timeout` have to end.
pub const CUT_GRACE: Duration = Duration::from_secs(1);
/// The same at an immediate stop, within what the worker waits for its loop's
/// cut-off (`server::LOOP_CUT_WAIT`): a task still running then is named by the loop.
pub const IMMEDIATE_CUT_GRACE: Duration = Duration::from_millis(300);
/// How long the loop has to take the cut-off: a loop blocked by a sync call does not,
/// and the worker then exits without lifespan shutdown.
pub const TAKE_WAIT: Duration = Duration::from_secs(1);
/// The least time the tasks the app left running have to end once cancelled (they
/// get what is left of `--graceful-timeout` when that is more).
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(1);
/// How long closing the async generators, and the default executor's jobs, may take
/// (each).
pub const ASIDE: Duration = Duration::from_secs(1);
/// Slack for the loop thread's own steps between the bounded waits.
const SLACK: Duration = Duration::from_millis(500);
/// lifespan.py waits this long for a shutdown cancelled at `--lifespan-timeout`.
const LIFESPAN_CANCEL: Duration = Duration::from_secs(1);

/// How long past `--graceful-timeout` a stopping ASGI worker may take: the cut-off,
/// lifespan shutdown (unless `--lifespan off`), the tasks left running. The master
/// waits this long (plus its own second) before it kills a stopping worker.
pub fn past_graceful(lifespan: LifespanMode, lifespan_timeout: Duration) -> Duration {
    let shutdown = match lifespan {
        LifespanMode::Off => Duration::ZERO,
        _ => lifespan_timeout + LIFESPAN_CANCEL,
    };
    CUT_GRACE + shutdown + LEFTOVER_GRACE + ASIDE * 2 + SLACK * 3
}

/// stop.py's `_serve(task)`: the request's wrapper (serve.rs) a task runs, found down
/// a task factory's wrappers too; None for any other task.
pub fn serve_finder(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    module(py)?.getattr("_serve")
}

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    static SOURCE: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    let source = SOURCE.get_or_init(|| {
        std::ffi::CString::new(include_str!("stop.py")).expect("stop.py has no NUL byte")
    });
    MODULE
        .get_or_try_init(py, || {
            // stop.py imports lifespan.py's `run`.
            super::lifespan::module(py)?;
            PyModule::from_code(py, source, c"postern/asgi/stop.py", c"_postern_stop")
                .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// Routes the loop's error reports (`loop.call_exception_handler`: a task's exception
/// nobody retrieved, a callback that raised) into `tracing` at error level. Without it
/// asyncio's default handler writes them to the process's stderr, outside postern's
/// log.
pub fn install_exception_handler(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let handler = PyCFunction::new_closure(
        py,
        Some(c"postern_exception_handler"),
        None,
        |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
            let py = args.py();
            let context = args.get_item(1)?;
            // describe()'s own failure (and the module's) is caught here too: a
            // report that escaped the handler would reach asyncio's fallback, which
            // prints raw text to stderr, outside postern's log.
            let described: PyResult<(String, Option<String>, String, Option<String>)> = module(py)
                .and_then(|m| m.call_method1("describe", (&context,)))
                .and_then(|d| d.extract());
            match described {
                Ok((message, task, details, tb)) => {
                    tracing::error!(
                        task = task.as_deref().map(tracing::field::display),
                        traceback = tb.as_deref().map(tracing::field::display),
                        "the event loop reported an error: {message}{}{details}",
                        if details.is_empty() { "" } else { "\n" },
                    );
                }
                Err(e) => {
                    // Not asyncio's default handler: it writes to stderr, and it fails
                    // on the same contexts describe() could not show.
                    let shown = context
                        .repr()
                        .map(|r| r.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "<a context whose repr() raised>".to_owned());
                    tracing::error!(
                        detail = %traceback(py, &e),
                        "the event loop reported an error that postern cannot describe: {shown}"
                    );
                }
            }
            Ok(())
        },
    )?;
    event_loop.call_method1("set_exception_handler", (handler,))?;
    Ok(())
}

const SERVING: u8 = 0;
/// `--graceful-timeout` passed while the loop served; the eventfd is written.
const CUT_ASKED: u8 = 1;
/// The loop took the cut-off: the requests' tasks are cancelled.
const CUT_TAKEN: u8 = 2;
/// The loop has stopped serving: lifespan shutdown.
const SHUTDOWN: u8 = 3;
/// Lifespan shutdown is over: the tasks the app left running and the rest ([`finish`]).
const FINISHING: u8 = 4;

/// What the thread waiting for the loop ([`Stop::join`]) and the loop thread share at
/// a stop.
pub struct Stop {
    base: Instant,
    phase: AtomicU8,
    /// By when (nanoseconds since `base`) the loop thread promises to be done with its
    /// current step; past it, `join` stops waiting.
    promise: AtomicU64,
    /// The `--graceful-timeout` deadline (nanoseconds since `base`; 0: not known yet).
    graceful: AtomicU64,
    /// Requests were cut off.
    cut: AtomicBool,
    /// The cut-off's tasks have ended, or had their grace.
    cut_over: AtomicBool,
    /// How many tasks the cut-off cancelled.
    cut_tasks: std::sync::atomic::AtomicUsize,
    /// When the cancelled tasks' grace ends (nanoseconds since `base`; 0: no cut-off
    /// yet): an immediate stop during `--graceful-timeout`'s grace brings it forward.
    cut_until: AtomicU64,
    /// Set for an immediate stop (a second signal, SIGQUIT, the master's stop now):
    /// what cut the requests off, as their lines say it ("by SIGQUIT"); unset, the cut
    /// is `--graceful-timeout`'s.
    cut_by: std::sync::OnceLock<String>,
    /// Written by `join` at the deadline; the loop watches it.
    fd: OwnedFd,
}

impl Stop {
    pub fn new() -> std::io::Result<Arc<Stop>> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Arc::new(Stop {
            base: Instant::now(),
            phase: AtomicU8::new(SERVING),
            promise: AtomicU64::new(0),
            graceful: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            cut_over: AtomicBool::new(false),
            cut_tasks: std::sync::atomic::AtomicUsize::new(0),
            cut_until: AtomicU64::new(0),
            cut_by: std::sync::OnceLock::new(),
            fd,
        }))
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The loop thread's current step ends within `within`.
    fn promise(&self, within: Duration) {
        self.promise
            .store(self.now() + within.as_nanos() as u64, Ordering::Release);
    }

    /// The stop began; the requests have until `deadline` (`--graceful-timeout`).
    pub fn stopping(&self, deadline: Instant) {
        let at = deadline.saturating_duration_since(self.base).as_nanos() as u64;
        self.graceful.store(at.max(1), Ordering::Release);
    }

    /// Waits for the loop thread (`handle`) to end. At `limit` (`--graceful-timeout`)
    /// with requests still running, it asks the loop to cut them off and waits for
    /// lifespan shutdown and the rest, as long as the loop thread keeps to the bounds
    /// it promised. True when the thread ended with no request cut off.
    pub fn join(&self, handle: JoinHandle<()>, limit: Duration) -> bool {
        let deadline = self.now() + limit.as_nanos() as u64;
        let _ = self
            .graceful
            .compare_exchange(0, deadline, Ordering::AcqRel, Ordering::Acquire);
        loop {
            if handle.is_finished() {
                let _ = handle.join();
                return !self.cut.load(Ordering::Acquire);
            }
            let now = self.now();
            if self.phase.load(Ordering::Acquire) == SERVING {
                // Read each time: an immediate stop moves it ([`Stop::cut_now`]).
                if now >= self.graceful.load(Ordering::Acquire) {
                    self.ask_cut();
                }
            } else if now >= self.promise.load(Ordering::Acquire) {
                // What the loop is stuck in decides what to say, and whether requests
                // were cut off: only a loop stuck before it stopped serving had any.
                match self.phase.load(Ordering::Acquire) {
                    SHUTDOWN => tracing::warn!(
                        "the app's lifespan shutdown did not end within --lifespan-timeout and {}s for its cancellation (a task blocking the loop in a sync call?); the worker exits without waiting for it",
                        LIFESPAN_CANCEL.as_secs_f64()
                    ),
                    FINISHING => tracing::warn!(
                        "tasks the app left running did not end once cancelled at the stop (one blocking the loop in a sync call?); the worker exits without waiting for them"
                    ),
                    _ => {
                        tracing::warn!(
                            "the event loop did not finish its stop in time (a task blocking the loop in a sync call?); the worker exits without waiting for it (lifespan shutdown may not have run)"
                        );
                        self.cut.store(true, Ordering::Release);
                    }
                }
                return !self.cut.load(Ordering::Acquire);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An immediate stop (a second signal, SIGQUIT, the master's stop now; `by` says
    /// which, "by SIGQUIT"): the requests are cut off now, as at `--graceful-timeout`
    /// (their tasks cancelled, each named with its access line), not left to die with
    /// the process. [`Stop::cut_over`] says when the tasks have ended or had their grace.
    /// regression (probe 352): the master named an ASGI worker's requests from its
    /// scoreboard, which shows 16 of them: the others were cut off unnamed.
    pub fn cut_now(&self, by: String) {
        let _ = self.cut_by.set(by);
        // A cut-off already under way (`--graceful-timeout`'s, 1 s of grace) ends
        // within the immediate stop's grace: the worker waits for it no longer.
        // regression (probe 358): its tasks that swallowed the cancellation were
        // named by nobody (a single process), or from the 16 scoreboard lines.
        self.hurry_cut();
        self.graceful.store(1, Ordering::Release);
        // Asked here, not left to `join`: the worker may not be waiting in it yet
        // (the drain first waits for the requests still being read).
        self.ask_cut();
    }

    /// The grace the tasks a cut-off cancels have to end.
    fn cut_grace(&self) -> Duration {
        if self.immediate() {
            IMMEDIATE_CUT_GRACE
        } else {
            CUT_GRACE
        }
    }

    /// Brings the cut-off's grace, if one runs, within [`IMMEDIATE_CUT_GRACE`] from now.
    fn hurry_cut(&self) {
        let soon = self.now() + IMMEDIATE_CUT_GRACE.as_nanos() as u64;
        let _ = self
            .cut_until
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u != 0 && u > soon).then_some(soon)
            });
    }

    /// The grace the cancelled tasks have in all (as said in their lines), and what is
    /// left of it, in seconds.
    fn cut_grace_left(&self) -> (f64, f64) {
        let grace = self.cut_grace();
        let until = self.cut_until.load(Ordering::SeqCst);
        let left = until.saturating_sub(self.now()) as f64 / 1e9;
        (grace.as_secs_f64(), left)
    }

    /// Asks the loop to cut its requests off (once; not once it has stopped serving).
    fn ask_cut(&self) {
        if self.phase.load(Ordering::Acquire) != SERVING {
            return;
        }
        // Never shortened: two threads may ask (`join` at --graceful-timeout, an
        // immediate stop), and the loser's must not cut a later step's bound (the
        // take's, lifespan shutdown's) short (review 354).
        self.promise
            .fetch_max(self.now() + TAKE_WAIT.as_nanos() as u64, Ordering::AcqRel);
        if self
            .phase
            .compare_exchange(SERVING, CUT_ASKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    /// The immediate stop's cut-off is over: the cancelled tasks have ended, or had
    /// their grace; true also when the loop has nothing to cut (no longer serving).
    pub fn cut_over(&self) -> bool {
        self.cut_over.load(Ordering::Acquire) || self.phase.load(Ordering::Acquire) > CUT_TAKEN
    }

    /// The stop is immediate ([`Stop::cut_now`]): no lifespan shutdown after it.
    pub fn immediate(&self) -> bool {
        self.cut_by.get().is_some()
    }

    /// The loop has taken the cut-off asked for (or stopped serving): false while a
    /// task blocks it in a sync call.
    pub fn cut_taken_yet(&self) -> bool {
        self.phase.load(Ordering::Acquire) != CUT_ASKED
    }

    /// How many tasks the cut-off cancelled (0 before it).
    pub fn cut_tasks(&self) -> usize {
        self.cut_tasks.load(Ordering::Acquire)
    }

    /// What cut the requests off, for their lines: "at --graceful-timeout", or the
    /// immediate stop's "by SIGQUIT".
    pub fn cut_says(&self) -> &str {
        self.cut_by
            .get()
            .map_or("at --graceful-timeout", String::as_str)
    }

    /// Watches the eventfd on `event_loop` (before it serves): at the cut-off the
    /// requests' tasks are cancelled and the loop stops once they have ended.
    pub fn watch(self: &Arc<Self>, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let me = Arc::clone(self);
        let take = PyCFunction::new_closure(
            py,
            Some(c"postern_cut_off"),
            None,
            move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let py = args.py();
                let event_loop = args.get_item(0)?;
                let grace = me.cut_grace();
                me.promise(grace + SLACK);
                me.cut_until
                    .store(me.now() + grace.as_nanos() as u64, Ordering::SeqCst);
                // An immediate stop asked as this took the graceful cut-off.
                if me.immediate() {
                    me.hurry_cut();
                }
                if me
                    .phase
                    .compare_exchange(CUT_ASKED, CUT_TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return Ok(());
                }
                let stop = Arc::clone(&me);
                let serving = PyCFunction::new_closure(
                    py,
                    Some(c"postern_serving"),
                    None,
                    move |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| stop.cut_taken(),
                )?;
                let stop = Arc::clone(&me);
                let ended = PyCFunction::new_closure(
                    py,
                    Some(c"postern_cut_over"),
                    None,
                    move |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
                        stop.cut_over.store(true, Ordering::Release);
                    },
                )?;
                let stop = Arc::clone(&me);
                let grace_left = PyCFunction::new_closure(
                    py,
                    Some(c"postern_cut_grace_left"),
                    None,
                    move |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
                        stop.cut_grace_left()
                    },
                )?;
                let n: usize = module(py)?
                    .call_method1(
                        "cut_off",
                        (&event_loop, me.fd.as_raw_fd(), grace_left, serving, ended),
                    )?
                    .extract()?;
                me.cut_tasks.store(n, Ordering::Release);
                if n > 0 {
                    me.cut.store(true, Ordering::Release);
                    match me.cut_by.get() {
                        Some(by) => tracing::warn!(
                            requests = n,
                            "stopping at once ({by}) with requests still running: their tasks are cancelled (the requests are cut off)"
                        ),
                        None => tracing::warn!(
                            requests = n,
                            "--graceful-timeout passed with requests still running: their tasks are cancelled (the requests are cut off); lifespan shutdown runs next"
                        ),
                    }
                }
                Ok(())
            },
        )?;
        event_loop.call_method1(
            "add_reader",
            (self.fd.as_raw_fd(), take, event_loop.clone()),
        )?;
        Ok(())
    }

    /// The loop took the cut-off: it stops serving even with tasks in flight.
    pub fn cut_taken(&self) -> bool {
        self.phase.load(Ordering::Acquire) == CUT_TAKEN
    }

    /// The loop has stopped serving (before lifespan shutdown, bounded by
    /// `lifespan_timeout`, and then [`LIFESPAN_CANCEL`] if it is cancelled there): the
    /// cut-off no longer applies.
    pub fn after_serving(&self, event_loop: &Bound<'_, PyAny>, lifespan_timeout: Duration) {
        self.promise(lifespan_timeout + LIFESPAN_CANCEL + SLACK);
        self.phase.store(SHUTDOWN, Ordering::Release);
        let _ = event_loop.call_method1("remove_reader", (self.fd.as_raw_fd(),));
    }

    /// How long the tasks the app left running have once cancelled: what is left of
    /// `--graceful-timeout`, at least [`LEFTOVER_GRACE`] (just that after a cut-off).
    fn leftover_timeout(&self) -> Duration {
        let graceful = self.graceful.load(Ordering::Acquire);
        if self.cut.load(Ordering::Acquire) || graceful == 0 {
            return LEFTOVER_GRACE;
        }
        Duration::from_nanos(graceful.saturating_sub(self.now())).max(LEFTOVER_GRACE)
    }
}

/// An immediate stop closes the loop without [`finish`]: the tasks still pending are
/// not reported as destroyed while pending (an error line per task at their
/// collection, the cut-off's own waiter among them).
/// regression (review 357): every immediate stop whose tasks ended at once logged
/// "Task was destroyed but it is pending!" for the cut-off's waiter.
pub fn forget_pending(py: Python<'_>, event_loop: &Bound<'_, PyAny>) {
    if let Err(e) = module(py).and_then(|m| m.call_method1("forget_pending", (event_loop,))) {
        tracing::debug!(detail = %traceback(py, &e), "cannot mark the pending tasks at the immediate stop");
    }
}

/// After lifespan shutdown, the loop not running: cancels the tasks the app left
/// running and lets them end (their `finally:` runs), then closes the async
/// generators and waits for the default executor's jobs (`executor`), each bounded;
/// logs how many tasks were cancelled, and what did not end in time.
pub fn finish(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    executor: &Bound<'_, PyAny>,
    stop: &Stop,
) {
    let timeout = stop.leftover_timeout();
    stop.promise(timeout + ASIDE * 2 + SLACK);
    stop.phase.store(FINISHING, Ordering::Release);
    let result: PyResult<(usize, usize, Vec<String>)> = module(py).and_then(|m| {
        m.call_method1(
            "finish",
            (
                event_loop,
                executor,
                timeout.as_secs_f64(),
                ASIDE.as_secs_f64(),
            ),
        )?
        .extract()
    });
    match result {
        Ok((cancelled, left, late)) => {
            if cancelled > 0 {
                tracing::info!(
                    tasks = cancelled,
                    ended = cancelled - left,
                    "cancelled the tasks the app left running on the event loop (they outlived their request), as asyncio.run does, and let them end"
                );
            }
            if left > 0 {
                tracing::warn!(
                    tasks = left,
                    "tasks the app left running did not end within {:.1}s of being cancelled; the worker exits without them",
                    timeout.as_secs_f64()
                );
            }
            if !late.is_empty() {
                tracing::warn!(
                    "{} did not finish within {}s; the worker exits without waiting",
                    late.join(" and "),
                    ASIDE.as_secs_f64()
                );
            }
        }
        Err(e) => {
            tracing::error!(detail = %traceback(py, &e), "cannot cancel the tasks left on the event loop at the stop")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_keeps_what_the_default_handler_shows_and_names_the_task() {
        crate::wsgi::interpreter::start_for_tests();
        Python::attach(|py| {
            let globals = PyDict::new(py);
            py.run(
                c"import asyncio
async def boom():
    raise RuntimeError('background boom')
loop = asyncio.new_event_loop()
task = loop.create_task(boom(), name='cache refresher')
loop.run_until_complete(asyncio.wait([task]))
context = {'message': 'Task exception was never retrieved', 'exception': task.exception(), 'future': task}
loop.close()",
                Some(&globals),
                None,
            )
            .unwrap();
            let context = globals.get_item("context").unwrap().unwrap();
            let (message, task, details, tb): (String, Option<String>, String, Option<String>) =
                module(py)
                    .unwrap()
                    .call_method1("describe", (context,))
                    .unwrap()
                    .extract()
                    .unwrap();
            assert_eq!(message, "Task exception was never retrieved");
            assert_eq!(task.as_deref(), Some("cache refresher"));
            assert!(
                details.starts_with("future: <Task finished name='cache refresher'"),
                "{details}"
            );
            let tb = tb.unwrap();
            assert!(
                tb.starts_with("Traceback") && tb.ends_with("RuntimeError: background boom"),
                "{tb}"
            );
        });
    }

    #[test]
    fn the_master_waits_for_the_lifespan_shutdown_unless_it_is_off() {
        let on = past_graceful(LifespanMode::Auto, Duration::from_secs(60));
        let off = past_graceful(LifespanMode::Off, Duration::from_secs(60));
        assert_eq!(on - off, Duration::from_secs(61));
        assert!(off >= CUT_GRACE + LEFTOVER_GRACE + ASIDE * 2);
    }
}
