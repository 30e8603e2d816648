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

/// How long the request that began last on a worker whose threads are all busy has
/// run before a request read whole there goes to the other workers instead
/// ([`SlowLane::busy_here`]): longer than the requests a saturated worker runs back to
/// back when they are quick, short next to one that holds its thread.
pub const STUCK_FOR: Duration = Duration::from_millis(2);

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

    /// Every Python thread of this worker runs a request (an ASGI worker: its loop is
    /// at `--max-concurrency`), there are other workers, and either one of theirs is
    /// free or the request here that began last has run [`STUCK_FOR`] already: a
    /// request whose head the slow lane has just read whole goes to the hand-over
    /// channel, its bytes with it, rather than wait here for one of these to end,
    /// however long they run. The channel is in every serving worker's epoll, this
    /// one's too: the first Python thread of any worker to wait takes it and serves it
    /// at once, as from a queue all workers share (when none is free within 50 ms, an
    /// I/O thread takes it into its worker). The slow lane reads the heads that did
    /// not come whole with the connection (Apache's `mod_proxy_fcgi` sends
    /// BEGIN_REQUEST in a write of its own: about a third of its requests), so before
    /// this such a request could wait in this worker's queue for seconds while the
    /// other workers idled (probe 410).
    ///
    /// A free thread elsewhere covers requests that came with the long ones (probe
    /// 410's case: they had begun microseconds before). The age covers the case where
    /// none is free at that instant (with one thread each, the worker that takes the
    /// first request handed over is busy for the next). Its cost: saturated by quick
    /// requests, a thread elsewhere is often free for an instant, and some requests
    /// are passed around that the next thread to free here would have taken about as
    /// soon (Apache, hello, `--workers 2 --threads 1`: about 3% of the requests, some
    /// 15% more context switches per request). Two loads on the usual path (a thread
    /// free here).
    pub fn busy_here(&self) -> bool {
        self.monitor.as_ref().is_some_and(|m| {
            m.threads_all_busy()
                && m.has_siblings()
                && !m.server_stopping()
                && (m.all_busy_for().is_some_and(|d| d >= STUCK_FOR) || m.idle_elsewhere() > 0)
        })
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
