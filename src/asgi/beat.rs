//! The event loop's heartbeat under `--timeout`: a loop blocked with no request in
//! flight (a blocking call in a task the app started at lifespan startup, or left
//! running after its response) accepts nothing until the call returns, and no
//! request's `--timeout` catches it. So while it serves, the loop ticks every [`TICK`]
//! (one `call_later`: no work per request, one wake-up a second when idle, none more
//! under load, where the tick joins an iteration the loop makes anyway), stamping the
//! time on the scoreboard ([`Monitor::loop_beat`]); the master treats a loop that has
//! not ticked for [`allowed`] (`--timeout` plus one tick) as a request past
//! `--timeout`: its stacks are dumped, naming where the loop is stuck
//! ([`super::dump`]), and it is replaced.
//!
//! Why the master watches and not a thread of the worker: the master already wakes
//! for `--timeout`, kills, replaces and names what the kill cuts off, and it does so
//! even when the worker cannot run a line (a C call holding the GIL); the worker's
//! dump thread, woken by the master's SIGUSR2, says where the loop is. A thread in
//! the worker would add a wake-up per tick to every worker to find the same thing.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::wsgi::{traceback, Monitor};

/// How often a serving loop ticks.
pub const TICK: Duration = Duration::from_secs(1);

/// How long a loop may go without a tick before it counts as blocked for `timeout`:
/// the block began at most one tick after the last, so past this it has lasted at
/// least `timeout`.
pub fn allowed(timeout: Duration) -> Duration {
    timeout + TICK
}

/// How long a loop whose last tick was `age` ago has been blocked at least, when that
/// is past `timeout` ([`allowed`]).
pub fn blocked_for(age: Duration, timeout: Duration) -> Option<Duration> {
    (age > allowed(timeout)).then(|| age - TICK)
}

/// When this process's loop last ticked, in nanoseconds after [`epoch`] (0: it does not
/// tick), for the dump thread.
static LAST: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// How long ago this process's loop last ticked, if it ticks.
pub fn since_last() -> Option<Duration> {
    match LAST.load(Ordering::Relaxed) {
        0 => None,
        at => Some(Duration::from_nanos(since_epoch().saturating_sub(at))),
    }
}

/// The loop's tick: stamps the time and comes back in [`TICK`].
#[pyclass(module = "postern", name = "Heartbeat", unsendable)]
pub struct Beat {
    monitor: Arc<dyn Monitor>,
    call_later: Py<PyAny>,
    /// The pending `call_later` handle.
    handle: RefCell<Option<Py<PyAny>>>,
    on: Cell<bool>,
}

impl Beat {
    /// Starts the heartbeat of `event_loop` (on the loop thread, as it begins to
    /// serve), when a master enforces `--timeout`.
    pub fn start(
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        monitor: Option<&Arc<dyn Monitor>>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<Py<Beat>>> {
        let (Some(monitor), Some(_)) = (monitor, timeout) else {
            return Ok(None);
        };
        let beat = Bound::new(
            py,
            Beat {
                monitor: Arc::clone(monitor),
                call_later: event_loop.getattr("call_later")?.unbind(),
                handle: RefCell::new(None),
                on: Cell::new(true),
            },
        )?;
        Beat::tick(&beat)?;
        Ok(Some(beat.unbind()))
    }

    fn tick(slf: &Bound<'_, Self>) -> PyResult<()> {
        let me = slf.borrow();
        if !me.on.get() {
            return Ok(());
        }
        LAST.store(since_epoch(), Ordering::Relaxed);
        me.monitor.loop_beat(true);
        let handle = me
            .call_later
            .bind(slf.py())
            .call1((TICK.as_secs_f64(), slf))?;
        *me.handle.borrow_mut() = Some(handle.unbind());
        Ok(())
    }

    /// The loop no longer serves (lifespan shutdown and the end follow, under the
    /// stop's own deadlines): no more ticks, and nobody watches the beat.
    pub fn stop(&self, py: Python<'_>) {
        self.on.set(false);
        if let Some(h) = self.handle.borrow_mut().take() {
            let _ = h.bind(py).call_method0(pyo3::intern!(py, "cancel"));
        }
        LAST.store(0, Ordering::Relaxed);
        self.monitor.loop_beat(false);
    }
}

#[pymethods]
impl Beat {
    fn __call__(slf: &Bound<'_, Self>) {
        if let Err(e) = Beat::tick(slf) {
            // Without its tick the master would take the loop for blocked.
            slf.borrow().on.set(false);
            slf.borrow().monitor.loop_beat(false);
            LAST.store(0, Ordering::Relaxed);
            tracing::error!(detail = %traceback(slf.py(), &e), "the event loop's heartbeat could not be scheduled; a loop blocked with no request in flight is no longer caught by --timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_blocked_once_past_timeout_plus_a_tick() {
        let t = Duration::from_secs(2);
        assert_eq!(blocked_for(Duration::from_millis(2500), t), None);
        assert_eq!(blocked_for(allowed(t), t), None);
        let age = Duration::from_millis(3200);
        assert_eq!(blocked_for(age, t), Some(Duration::from_millis(2200)));
        // What it reports is never under --timeout.
        assert!(blocked_for(age, t).unwrap() > t);
    }
}
