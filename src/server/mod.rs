//! tokio: accept loops over the bound listeners, one task per connection, and the
//! graceful stop (stop accepting, let in-flight requests finish, remove Unix sockets).
//!
//! - [`listener`]: binding TCP/Unix sockets (mode, owner, stale sockets).
//! - [`connection`]: one uwsgi connection from head to close.

pub mod connection;
pub mod listener;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use connection::{Context, Limits};
use listener::{Bound, BoundSocket, ListenAddr};

use crate::wsgi::pool::Pool;

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

/// Serves until `shutdown` fires, then drains in-flight connections for up to
/// `graceful`. Returns true when everything finished in time.
pub async fn serve(
    listeners: Vec<Bound>,
    pool: Pool,
    limits: Limits,
    shutdown: CancellationToken,
    graceful: Duration,
) -> Result<bool, ServerError> {
    let tracker = TaskTracker::new();
    let mut accept_loops = Vec::new();
    let mut unix_paths = Vec::new();
    for bound in listeners {
        let ctx = Arc::new(Context {
            pool: pool.clone(),
            limits: limits.clone(),
            listener: bound.info.clone(),
        });
        let token = shutdown.clone();
        let tracker = tracker.clone();
        let label: Arc<str> = Arc::from(bound.addr.to_string());
        match bound.socket {
            BoundSocket::Tcp(l) => {
                let l =
                    tokio::net::TcpListener::from_std(l).map_err(|source| ServerError::Bind {
                        addr: label.to_string(),
                        source,
                    })?;
                accept_loops.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            r = l.accept() => match r {
                                Ok((s, peer)) => {
                                    let _ = s.set_nodelay(true);
                                    tracker.spawn(connection::serve(s, Arc::from(peer.to_string()), ctx.clone()));
                                }
                                Err(e) => accept_error(&label, e).await,
                            }
                        }
                    }
                }));
            }
            BoundSocket::Unix(l) => {
                if let ListenAddr::Unix(p) = &bound.addr {
                    unix_paths.push(p.clone());
                }
                let l =
                    tokio::net::UnixListener::from_std(l).map_err(|source| ServerError::Bind {
                        addr: label.to_string(),
                        source,
                    })?;
                accept_loops.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            r = l.accept() => match r {
                                Ok((s, _)) => {
                                    tracker.spawn(connection::serve(s, label.clone(), ctx.clone()));
                                }
                                Err(e) => accept_error(&label, e).await,
                            }
                        }
                    }
                }));
            }
        }
    }
    drop(pool);
    shutdown.cancelled().await;
    // Stop accepting: the accept loops end and drop (close) their listeners.
    for l in accept_loops {
        let _ = l.await;
    }
    for p in &unix_paths {
        let _ = std::fs::remove_file(p);
    }
    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            "stopped accepting; waiting for in-flight requests (--graceful-timeout {graceful:?})"
        );
    }
    let finished = tokio::time::timeout(graceful, tracker.wait()).await.is_ok();
    if !finished {
        tracing::warn!(
            left = tracker.len(),
            "in-flight requests did not finish within --graceful-timeout; stopping anyway"
        );
    }
    Ok(finished)
}

/// Accept errors are the host's (fd limits, memory): log and back off briefly, never
/// spin or stop serving.
async fn accept_error(label: &str, e: std::io::Error) {
    tracing::error!(listener = label, error = %e, "accept failed (file descriptor limit? see ulimit -n)");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
