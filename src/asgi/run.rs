//! The loop thread ("python-asgi"): one asyncio event loop per worker.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{AsgiError, AsgiSettings};
use crate::wsgi::{App, Settings, Source};

/// The running loop thread, to join at shutdown.
pub struct Running(JoinHandle<()>);

/// Starts the loop thread serving `app` from `source`; returns once lifespan startup
/// has completed (the worker reports ready only then).
pub fn start(
    _app: App,
    _settings: Settings,
    _asgi: AsgiSettings,
    _source: Arc<dyn Source>,
) -> Result<Running, AsgiError> {
    Err(AsgiError::Thread(std::io::Error::other(
        "ASGI serving is not built yet",
    )))
}

impl Running {
    /// Waits for the loop thread to finish, up to `limit`; false if it still runs.
    pub fn join(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.0.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.join();
        true
    }
}
