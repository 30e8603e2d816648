//! What the stats endpoint shows of this server: a [`stats::Snapshot`] built from the
//! scoreboard, each worker's resident memory (/proc, read at scrape time rather than
//! on the request path) and the listeners' accept queues.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::scoreboard::Scoreboard;
use crate::codec::Protocol;
use crate::server::listener::{Bound, BoundSocket};
use crate::stats::{self, Snapshot};

/// A listening socket whose accept queue is reported (a duplicate of the listener).
pub struct Probe {
    addr: String,
    protocol: Protocol,
    tcp: bool,
    fd: OwnedFd,
}

/// Probes for the serving listeners (duplicated descriptors; the originals stay with
/// their owners).
pub fn probes(bound: &[Bound]) -> std::io::Result<Vec<Probe>> {
    bound
        .iter()
        .map(|b| {
            let (tcp, fd) = match &b.socket {
                BoundSocket::Tcp(l) => (true, l.as_fd().try_clone_to_owned()?),
                BoundSocket::Unix(l) => (false, l.as_fd().try_clone_to_owned()?),
            };
            Ok(Probe {
                addr: b.addr.to_string(),
                protocol: b.info.protocol,
                tcp,
                fd,
            })
        })
        .collect()
}

/// Builds snapshots of `board`. Call it in the process whose uptime and pid the
/// endpoint reports (the master, or the single process), before any fork.
pub fn source(
    board: Arc<Scoreboard>,
    master: bool,
    listeners: Vec<Probe>,
    config: Vec<(String, String)>,
) -> stats::Source {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let pid = std::process::id();
    Arc::new(move || {
        let reading = board.read();
        let mut workers = reading.workers;
        for w in &mut workers {
            if let Some(rss) = rss_bytes(w.pid) {
                w.rss_bytes = Some(rss);
            }
        }
        let listeners = listeners
            .iter()
            .map(|p| {
                let depth = stats::queue::depth(p.fd.as_fd(), p.tcp);
                stats::Listener {
                    addr: p.addr.clone(),
                    protocol: p.protocol,
                    queued: depth.map(|d| d.0),
                    backlog: depth.map(|d| d.1),
                }
            })
            .collect();
        // Workers publish their own count with each request; a single process's
        // counter can be read directly.
        let mut log_lines_dropped = reading.log_lines_dropped;
        if !master {
            log_lines_dropped =
                log_lines_dropped.max(crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed));
        }
        Snapshot {
            pid,
            master,
            stopping: reading.stopping,
            uptime: started.elapsed(),
            started_unix,
            // SIGTTIN/SIGTTOU change the number of workers after the start.
            // regression: /status showed the --workers of the start for ever.
            // A reload publishes its generation's summary (threads, timeouts, app).
            config: reading
                .summary
                .as_ref()
                .unwrap_or(&config)
                .iter()
                .map(|(k, v)| match reading.target {
                    Some(n) if k == "workers" => (k.clone(), n.to_string()),
                    _ => (k.clone(), v.clone()),
                })
                .collect(),
            totals: reading.totals,
            events: reading.events,
            workers,
            listeners,
            log_lines_dropped,
        }
    })
}

/// Resident set size of process `pid`, in bytes.
fn rss_bytes(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::supervisor::scoreboard::page_size())
}

/// `--stats` in a single process (no master): a one-slot scoreboard, the endpoint on a
/// thread of its own, and the monitor the Python threads report to. The slot says
/// "starting" until [`super::WorkerMonitor::serving`].
pub fn start_single(
    stats: Bound,
    listeners: &[Bound],
    threads: usize,
    config: Vec<(String, String)>,
) -> std::io::Result<Arc<super::WorkerMonitor>> {
    let board = Arc::new(Scoreboard::standalone(threads)?);
    let src = source(Arc::clone(&board), false, probes(listeners)?, config);
    stats::server::spawn(stats, src)?;
    Ok(Arc::new(super::WorkerMonitor::standalone(board)))
}
