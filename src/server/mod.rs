//! Serving: the Python threads accept and answer complete requests themselves
//! ([`acceptor`], the fast path); tokio reads the rest ([`connection`], the slow lane);
//! and the graceful stop (stop accepting, let in-flight requests finish, remove Unix
//! sockets).
//!
//! - [`listener`]: binding TCP/Unix sockets (mode, owner, stale sockets).
//! - [`acceptor`]: accept + first read on the Python threads; the ready queue.
//! - [`connection`]: the slow lane: partial heads, large/slow bodies, bad input.
//! - [`sink`]: writing the response from a Python thread, then close or abort.

pub mod acceptor;
pub mod connection;
pub mod listener;
pub mod sink;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use acceptor::{Acceptor, Listener, Shared};
use connection::{Limits, SlowLane};
use listener::{Bound, BoundSocket, ListenAddr};

use crate::wsgi::pool::Pool;
use crate::wsgi::{App, Settings};

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "another server is still answering on {}; stop it first or choose another socket path",
        .0.display()
    )]
    LiveSocket(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(std::io::Error),
}

/// Removes the Unix socket files of `listeners` (at exit, or after a failed start).
pub fn remove_unix_sockets(listeners: &[Bound]) {
    for l in listeners {
        if let ListenAddr::Unix(p) = &l.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serves `app` on the bound listeners until SIGTERM/SIGINT, then stops gracefully:
/// no new connections, the slow lane and the Python threads finish what is in flight
/// (up to `graceful`), Unix sockets are removed. Returns true when everything finished
/// in time.
pub fn run(
    bound: Vec<Bound>,
    app: App,
    settings: Settings,
    limits: Limits,
    graceful: Duration,
) -> Result<bool, ServerError> {
    // One I/O thread is plenty: it only carries the slow lane.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("postern-io")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let shared = Shared::new().map_err(ServerError::Runtime)?;
    let tracker = TaskTracker::new();
    let mut unix_paths = Vec::new();
    let listeners: Vec<Listener> = bound
        .into_iter()
        .map(|b| {
            let label: Arc<str> = Arc::from(b.addr.to_string());
            if let ListenAddr::Unix(p) = &b.addr {
                unix_paths.push(p.clone());
            }
            let (sock, tcp) = match b.socket {
                BoundSocket::Tcp(l) => (socket2::Socket::from(l), true),
                BoundSocket::Unix(l) => (socket2::Socket::from(l), false),
            };
            Listener {
                sock,
                tcp,
                label,
                info: b.info,
            }
        })
        .collect();
    let listeners = Arc::new(listeners);
    let acceptor = Arc::new(Acceptor {
        listeners: Arc::clone(&listeners),
        shared: Arc::clone(&shared),
        slow: SlowLane {
            handle: runtime.handle().clone(),
            tracker: tracker.clone(),
            shared: Arc::clone(&shared),
            limits: limits.clone(),
        },
        limits,
    });
    let pool = Pool::start(app, settings, acceptor).map_err(ServerError::Runtime)?;

    let deadline = runtime.block_on(async {
        wait_for_signal().await;
        shared.stop_accepting();
        // Refuse new connections at once (pending ones are reset) and unlink sockets.
        for l in listeners.iter() {
            let _ = l.sock.shutdown(std::net::Shutdown::Both);
        }
        for p in &unix_paths {
            let _ = std::fs::remove_file(p);
        }
        let deadline = Instant::now() + graceful;
        tracker.close();
        if tokio::time::timeout(graceful, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "requests still being read at --graceful-timeout"
            );
        }
        deadline
    });
    shared.exit();
    let finished = pool.join(deadline.saturating_duration_since(Instant::now()));
    if !finished {
        tracing::warn!("requests still running at --graceful-timeout; stopping anyway");
    }
    drop(runtime);
    Ok(finished)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop postern with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "stopping: no new connections, letting in-flight requests finish"
    );
}
