//! The Python threads (`--threads N`). Each attaches to the interpreter once and waits
//! for jobs with the GIL released; tokio threads never attach.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use pyo3::prelude::*;

use super::environ::Keys;
use super::{response, Request, Settings};

/// Hands requests to the Python threads. Dropping every clone ends the threads once
/// their queue is empty.
#[derive(Clone)]
pub struct Pool {
    tx: mpsc::Sender<Request>,
}

/// The threads themselves, to join at shutdown.
pub struct Threads(Vec<JoinHandle<()>>);

impl Pool {
    /// Starts `settings.threads` Python threads serving `app`.
    pub fn start(app: Py<PyAny>, settings: Settings) -> std::io::Result<(Pool, Threads)> {
        let (tx, rx) = mpsc::channel::<Request>();
        let rx = Arc::new(Mutex::new(rx));
        let app = Arc::new(app);
        let settings = Arc::new(settings);
        let mut handles = Vec::with_capacity(settings.threads);
        for i in 0..settings.threads {
            let rx = Arc::clone(&rx);
            let app = Arc::clone(&app);
            let settings = Arc::clone(&settings);
            let handle = std::thread::Builder::new()
                .name(format!("python-{i}"))
                .spawn(move || {
                    Python::attach(|py| {
                        let keys = Keys::new(py);
                        loop {
                            let job = py.detach(|| rx.lock().ok().and_then(|rx| rx.recv().ok()));
                            let Some(req) = job else { break };
                            // A panic must fail one request, not the thread.
                            let r = catch_unwind(AssertUnwindSafe(|| {
                                response::handle(py, &keys, &app, &settings, req)
                            }));
                            if r.is_err() {
                                tracing::error!("internal error while serving a request (panic); the connection is aborted");
                            }
                        }
                    })
                })?;
            handles.push(handle);
        }
        Ok((Pool { tx }, Threads(handles)))
    }

    /// Queues a request; gives it back if the threads are gone.
    pub fn submit(&self, req: Request) -> Result<(), Request> {
        self.tx.send(req).map_err(|e| e.0)
    }
}

impl Threads {
    /// Waits for every thread to finish (after every `Pool` clone is dropped).
    pub fn join(self) {
        for h in self.0 {
            let _ = h.join();
        }
    }
}
