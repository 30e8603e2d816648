//! sd_notify(3): tells systemd (when `NOTIFY_SOCKET` is set) that postern is ready,
//! reloading or stopping. Only the master (or the single process) notifies.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to systemd; does nothing without NOTIFY_SOCKET.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "cannot notify systemd");
    }
}

/// The monotonic time systemd wants with RELOADING=1.
pub fn monotonic_usec() -> u64 {
    super::scoreboard::now_ns() / 1000
}
