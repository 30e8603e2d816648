//! The Python threads (`--threads N`). Each attaches to the interpreter once, then
//! loops: take the next complete request from the [`Source`] with the GIL released,
//! run it, write the response. tokio threads never attach.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::environ::Keys;
use super::{response, App, Served, Settings, Source};

/// The running threads, to join at shutdown.
pub struct Pool(Vec<JoinHandle<()>>);

impl Pool {
    /// Starts `settings.threads` Python threads serving `app` from `source`.
    pub fn start(app: App, settings: Settings, source: Arc<dyn Source>) -> std::io::Result<Pool> {
        let app = Arc::new(app.0);
        super::response::watch_statuses(settings.monitor.as_ref());
        let settings = Arc::new(settings);
        let mut handles = Vec::with_capacity(settings.threads);
        for i in 0..settings.threads {
            let source = Arc::clone(&source);
            let app = Arc::clone(&app);
            let settings = Arc::clone(&settings);
            let handle = std::thread::Builder::new()
                .name(format!("python-{i}"))
                .stack_size(super::python_thread_stack())
                .spawn(move || {
                    Python::attach(|py| {
                        let keys = Keys::new(py, &settings);
                        keys.inflight.set_thread(i);
                        // The request this thread just finished, for the monitor: its
                        // `end` runs in the same GIL release as the wait for the next
                        // request (one release per request, not two).
                        // With whether a stop counted it already (`Monitor::cut`).
                        let mut done: Option<(Option<Served>, bool)> = None;
                        let next = |done: &mut Option<(Option<Served>, bool)>| {
                            crate::forked::guard();
                            // The access line of the request just served (see
                            // `logging::access_later`).
                            crate::logging::write_deferred();
                            if let (Some(m), Some((served, counted))) =
                                (&settings.monitor, done.take())
                            {
                                m.end(i, served.as_ref(), counted);
                            }
                            source.next()
                        };
                        while let Some(req) = py.detach(|| next(&mut done)) {
                            if let Some(m) = &settings.monitor {
                                m.begin(i, &req.head, &req.request_id, req.listener.protocol);
                            }
                            req.sink.serving_here();
                            // A panic must fail one request, not the thread.
                            let r = catch_unwind(AssertUnwindSafe(|| {
                                response::handle(py, &keys, &app, &settings, req)
                            }));
                            // Whatever this thread served is over (a panic may have
                            // left its sink to be dropped elsewhere).
                            crate::server::fastcgi::crash::clear();
                            done = Some(match &r {
                                Ok((served, named)) => (Some(*served), *named),
                                Err(_) => {
                                    // Its request's `end` never ran: not its next one's
                                    // (counted already if a stop cut it off meanwhile).
                                    let named = keys.inflight.abandon();
                                    tracing::error!(
                                        "internal error while serving a request (panic); the connection is aborted"
                                    );
                                    (None, named)
                                }
                            });
                        }
                    })
                })?;
            handles.push(handle);
        }
        Ok(Pool(handles))
    }

    /// Waits for the threads to finish, up to `limit`. Returns false if some are still
    /// running (a request that outlives the graceful timeout cannot be interrupted).
    pub fn join(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.0.iter().any(|h| !h.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in self.0 {
            let _ = h.join();
        }
        true
    }
}
