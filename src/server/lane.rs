//! The slow lane's handle and the limits every connection is held to. The handle only
//! spawns futures on the I/O runtime; what a connection does there lives with its
//! protocol ([`super::connection`] for uwsgi/SCGI, [`super::fastcgi`]), so this module
//! imports nothing of theirs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::Queue;
use crate::codec::Protocol;

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest vars block (`--buffer-size`).
    pub buffer_size: usize,
    /// Bodies above this go to a temporary file (`--body-spool-threshold`).
    pub spool_threshold: u64,
    /// Larger bodies answer 413 (`--max-body`).
    pub max_body: Option<u64>,
    /// Time allowed from accept to a complete head (`--head-timeout`).
    pub head_timeout: Duration,
    /// Longest wait between two reads of the body, or two writes of the response
    /// (`--read-timeout`).
    pub read_timeout: Duration,
    /// FastCGI: STDERR copies, the advertised limits.
    pub fcgi: FcgiSettings,
    /// Connections one worker holds open (`--max-connections`; `None`: from the
    /// open-files limit).
    pub max_connections: Option<usize>,
}

/// What every FastCGI connection of this process is allowed and advertises.
#[derive(Debug, Clone)]
pub struct FcgiSettings {
    /// Copy `wsgi.errors` to the front server as FCGI_STDERR.
    pub stderr: bool,
    /// FCGI_MAX_CONNS / FCGI_MAX_REQS: requests this process (all workers) runs at once.
    pub max_reqs: usize,
    /// Input held for apps that have not read it (`--fastcgi-buffer`, `-total`).
    pub input: Arc<super::admission::InputBudget>,
}

/// Handle for spawning slow-lane connections from the Python threads.
#[derive(Clone)]
pub struct SlowLane {
    pub handle: tokio::runtime::Handle,
    pub tracker: TaskTracker,
    /// Where complete requests go.
    pub queue: Arc<Queue>,
    pub limits: Limits,
    /// Cancelled when the server stops: connections that sent nothing are closed.
    pub stopping: CancellationToken,
    /// Cancelled when any process (worker too) stops: idle FastCGI keep-alive
    /// connections are closed.
    pub idle_close: CancellationToken,
    /// Told of the requests refused here (they never reach a Python thread).
    pub monitor: Option<Arc<dyn crate::wsgi::Monitor>>,
}

impl SlowLane {
    /// Counts a request answered with `status` (or closed without an answer: `None`)
    /// before any Python thread ran it.
    pub fn refused(&self, protocol: Protocol, status: Option<u16>) {
        if let Some(m) = &self.monitor {
            m.refused(protocol, status);
        }
    }

    /// Runs a connection's task on the I/O runtime; the stop waits for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Counted before it runs: the Python threads wait for it at the stop.
        let task = self.queue.lane_task();
        self.tracker.spawn_on(
            async move {
                let _task = task;
                fut.await
            },
            &self.handle,
        );
    }
}
