//! Binding listeners: TCP (IPv4/IPv6) and Unix sockets, with the mode and owner the
//! user configured, a stale Unix socket removed, and a live one refused.

use std::ffi::OsStr;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use socket2::{Domain, SockAddr, Socket, Type};

use super::ServerError;
use crate::codec::Protocol;
use crate::wsgi::ListenerInfo;

/// One listening socket as the acceptor (and admission, which takes it out of the
/// epoll at --max-connections) sees it.
pub struct Listener {
    pub sock: socket2::Socket,
    pub tcp: bool,
    pub label: Arc<str>,
    pub info: ListenerInfo,
    /// Passed by systemd, which keeps it for the next start: never shut or filtered.
    pub inherited: bool,
}

/// The listener the last connection was accepted from, plus one (0: none yet), where
/// the next arming of listeners in an epoll starts ([`arm_first`]). The listeners ready
/// when they are armed (a new worker's epoll, accept resumed after `--max-requests` or
/// `--max-connections`) go onto the epoll's ready list in the order they are armed,
/// and a worker that waits for one event takes the first. Armed always from the first
/// listener, every new worker under `--max-requests 1` took its one request from the
/// first listener while that one had connections waiting, and the others' clients
/// waited (or timed out). Kept in a page shared by the master's workers (mapped at
/// bind, before the fork), so that the next worker starts after the listener the last
/// one served; where there is none (the page could not be mapped), it is this
/// process's own.
fn last_accepted() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::atomic::AtomicUsize;
    static LAST: std::sync::OnceLock<&'static AtomicUsize> = std::sync::OnceLock::new();
    LAST.get_or_init(|| {
        match crate::shared_mem::map_shared(std::mem::size_of::<AtomicUsize>()) {
            // SAFETY: the mapping is never unmapped: zeroed (a valid AtomicUsize 0),
            // page-aligned, alive as long as the process, and shared with the children
            // forked after this.
            Ok(p) => unsafe { p.cast::<AtomicUsize>().as_ref() },
            Err(_) => Box::leak(Box::new(AtomicUsize::new(0))),
        }
    })
}

/// Maps the shared [`last_accepted`] page, in the master before it forks (else each
/// worker maps its own on first use).
pub fn share_accept_turns() {
    let _ = last_accepted();
}

/// The listener (of `0..n`) to arm first in an epoll now, then the ones after it in
/// turn: the one after the listener the last connection came from.
pub fn arm_first(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    last_accepted().load(std::sync::atomic::Ordering::Relaxed) % n
}

/// A connection was accepted from listener `i` (written only when it changes: under
/// load on one listener, the shared line is only read).
#[inline]
pub fn accepted_from(i: usize) {
    let last = last_accepted();
    let next = i.wrapping_add(1);
    if last.load(std::sync::atomic::Ordering::Relaxed) != next {
        last.store(next, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Failed accepts that come from a listener shut down under this process, not from a
/// race lost to another worker. A shut listener stays ready in the epoll (TCP: HUP,
/// accept fails with EINVAL; a Unix listener after `shutdown(SHUT_RD)`: readable, and
/// accept fails with EAGAIN, as it does when a sibling took the connection), so a
/// process that goes on accepting from it spins at 100% CPU.
#[derive(Default)]
pub struct ShutWatch {
    /// EAGAINs so far: every [`PROBE_EVERY`]th one looks at the listener (one poll),
    /// so races lost to siblings under load cost no system call more.
    fruitless: std::sync::atomic::AtomicU32,
    /// The listeners (their labels) found shut, each reported once.
    seen: std::sync::Mutex<Vec<Arc<str>>>,
}

/// See [`ShutWatch::fruitless`]: a spinning thread makes this many failed accepts in
/// well under a millisecond.
const PROBE_EVERY: u32 = 128;

impl ShutWatch {
    /// After an accept on `l` failed with `e`: whether `l` no longer listens.
    pub fn shut(&self, l: &Listener, e: Errno) -> bool {
        use std::sync::atomic::Ordering;
        match e {
            // Only a socket that is not (or no longer) listening.
            Errno::INVAL | Errno::BADF | Errno::NOTSOCK => true,
            Errno::AGAIN => {
                self.fruitless.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
                    && is_shut(&l.sock)
            }
            _ => false,
        }
    }

    /// `l` was found shut: whether this is the first time (to say so once). It leaves
    /// the epoll for good ([`super::arming::Arming::shut`]).
    pub fn found(&self, l: &Listener) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.iter().any(|s| Arc::ptr_eq(s, &l.label)) {
            return false;
        }
        seen.push(Arc::clone(&l.label));
        true
    }
}

/// Whether the listener `sock` was shut down: poll says RDHUP or HUP (nothing else
/// does on a listening socket).
pub fn is_shut(sock: &Socket) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(sock, PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP)
}

/// Why a listener could not be bound: what happened, in words, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: the directory {dir} does not exist; create it (`mkdir -p {dir}`{runtime}) or choose another path")]
    NoDirectory {
        addr: ListenAddr,
        dir: String,
        /// The systemd way, for a directory under /run.
        runtime: String,
    },
    #[error("cannot listen on {addr}: the address is already in use by another process; find it with `{find}`, then stop it or choose another address")]
    InUse { addr: ListenAddr, find: String },
    #[error("cannot listen on {addr}: another server is still answering on this socket; find it with `ss -lxp | grep {}`, then stop it or choose another socket path", path.display())]
    LiveSocket { addr: ListenAddr, path: PathBuf },
    #[error("cannot listen on {addr}: {} exists and is not a socket ({kind}); refusing to replace it (remove it or choose another path)", path.display())]
    NotASocket {
        addr: ListenAddr,
        path: PathBuf,
        /// What it is instead, e.g. "a symbolic link to /etc/passwd: postern never follows one".
        kind: String,
    },
    #[error("cannot listen on {addr}: {} is a socket postern (uid {uid}) may not connect to, so whether a server still answers on it is unknown; remove it if it is stale, or choose another path", path.display())]
    ForeignSocket {
        addr: ListenAddr,
        path: PathBuf,
        uid: u32,
    },
    #[error("cannot listen on {addr}: {} is a stale socket of uid {owner} that postern (uid {uid}) may not remove (the directory's sticky bit keeps each user's files theirs); remove it as root or as that user, or choose another path", path.display())]
    StaleForeign {
        addr: ListenAddr,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error("cannot listen on {addr}: {dir} is not a directory; the socket's path must be DIRECTORY/NAME")]
    NotADirectory { addr: ListenAddr, dir: String },
    #[error("cannot listen on {addr}: {what} changed while the socket was being created ({detail}); something else is working in that directory: use one only postern's user can write")]
    Raced {
        addr: ListenAddr,
        what: &'static str,
        detail: String,
    },
    #[error("cannot listen on {addr}: permission denied; {hint}")]
    Denied { addr: ListenAddr, hint: String },
    #[error("cannot listen on {addr}: {ip} is not an address of this machine; use one of its own addresses, 127.0.0.1, or :PORT for all of them")]
    NotLocal {
        addr: ListenAddr,
        ip: std::net::IpAddr,
    },
    #[error("cannot listen on {addr}: setting {option}: {cause}")]
    Apply {
        addr: ListenAddr,
        option: &'static str,
        cause: io::Error,
    },
    // The cause is in the message, not a `source`: printed once.
    #[error("cannot listen on {addr}: {cause}")]
    Other { addr: ListenAddr, cause: io::Error },
}

impl BindError {
    /// Turns what bind(2) and friends said into a sentence for `addr`.
    fn from_io(addr: &ListenAddr, cause: io::Error) -> BindError {
        let addr_ = addr.clone();
        match (addr, Errno::from_io_error(&cause)) {
            (_, Some(Errno::ADDRINUSE)) => BindError::InUse {
                addr: addr_,
                find: match addr {
                    ListenAddr::Tcp(sa) => format!("ss -tanp 'sport = :{}'", sa.port()),
                    ListenAddr::Unix(p) => format!("ss -lxp | grep {}", p.display()),
                },
            },
            (ListenAddr::Unix(p), Some(Errno::NOENT)) => match p.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
                    let runtime = dir
                        .strip_prefix("/run")
                        .or_else(|_| dir.strip_prefix("/var/run"))
                        .ok()
                        .filter(|rest| !rest.as_os_str().is_empty())
                        .map(|rest| {
                            format!(", or `RuntimeDirectory={}` in the systemd unit", rest.display())
                        })
                        .unwrap_or_default();
                    BindError::NoDirectory {
                        addr: addr_,
                        dir: dir.display().to_string(),
                        runtime,
                    }
                }
                _ => BindError::Other { addr: addr_, cause },
            },
            (ListenAddr::Unix(p), Some(Errno::ACCESS | Errno::PERM | Errno::ROFS)) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                let dir = dir.map_or(".".into(), |d| d.display().to_string());
                BindError::Denied {
                    addr: addr_,
                    hint: format!(
                        "postern (uid {}) may not create files in {dir}; make it writable for this user (systemd: `RuntimeDirectory=` with `User=`) or choose another path",
                        rustix::process::geteuid().as_raw()
                    ),
                }
            }
            (ListenAddr::Tcp(sa), Some(Errno::ACCESS | Errno::PERM)) if sa.port() < 1024 => {
                BindError::Denied {
                    addr: addr_,
                    hint: "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability (systemd: `AmbientCapabilities=CAP_NET_BIND_SERVICE`); or use a port above 1023".into(),
                }
            }
            (ListenAddr::Tcp(sa), Some(Errno::ADDRNOTAVAIL)) => BindError::NotLocal {
                addr: addr_,
                ip: sa.ip(),
            },
            _ => BindError::Other { addr: addr_, cause },
        }
    }
}

/// The host name in Apache's `unix:PATH|uwsgi://NAME/` for a Unix socket: Apache keeps
/// one connection pool (a "worker") per `scheme://NAME/` and ignores the path when
/// two `ProxyPass` lines share a name, so two apps written with the same NAME (such as
/// `localhost`) all reach the first one's socket. Made from the socket's directory and
/// file name, letters, digits and `-` only, then a hash of the whole path so that two
/// sockets never share it (`/run/shop/postern.sock` → `shop-postern-` and six hex
/// digits); `postern-` in front when it has no letter (Apache refuses an all-digit host).
pub fn apache_worker_name(path: &Path) -> String {
    let clean = |s: &std::ffi::OsStr| -> String {
        let mut out = String::new();
        for c in s.to_string_lossy().chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        out.trim_end_matches('-').to_owned()
    };
    let stem = path.file_stem().map(clean).unwrap_or_default();
    let dir = path
        .parent()
        .and_then(Path::file_name)
        .map(clean)
        .unwrap_or_default();
    let mut name = match (dir.as_str(), stem.as_str()) {
        ("", "") => "postern".to_owned(),
        (d, s) if d == s || d.is_empty() => s.to_owned(),
        (d, "") => d.to_owned(),
        (d, s) => format!("{d}-{s}"),
    };
    if !name.bytes().any(|b| b.is_ascii_alphabetic()) {
        name.insert_str(0, "postern-");
    }
    // FNV-1a of the path's bytes: stable from one start (and build) to the next.
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    // A label of a host name is at most 63 characters: 56 + `-` + 6.
    name.truncate(56);
    format!("{}-{:06x}", name.trim_end_matches('-'), hash & 0xff_ffff)
}

/// The lines that point a front server at this listener: nginx's `*_pass` and Apache's
/// `ProxyPass`, for the start-up log.
pub fn front_server_lines(protocol: Protocol, addr: &ListenAddr) -> (String, String) {
    let (directive, scheme) = match protocol {
        Protocol::Uwsgi => ("uwsgi_pass", "uwsgi"),
        Protocol::FastCgi => ("fastcgi_pass", "fcgi"),
        Protocol::Scgi => ("scgi_pass", "scgi"),
    };
    match addr {
        ListenAddr::Unix(p) => (
            format!("{directive} unix:{};", p.display()),
            format!(
                "ProxyPass \"/\" \"unix:{}|{scheme}://{}/\"",
                p.display(),
                apache_worker_name(p)
            ),
        ),
        ListenAddr::Tcp(sa) => {
            // A front server on this machine reaches "all interfaces" on loopback.
            let mut sa = *sa;
            if sa.ip().is_unspecified() {
                sa.set_ip(match sa {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            (
                format!("{directive} {sa};"),
                format!("ProxyPass \"/\" \"{scheme}://{sa}/\""),
            )
        }
    }
}

/// True for an address only this machine can reach: 127.0.0.0/8, ::1 (and
/// ::ffff:127.0.0.0/104). A Unix socket is governed by its file's mode and owner.
pub fn is_local_only(addr: &ListenAddr) -> bool {
    match addr {
        ListenAddr::Unix(_) => true,
        ListenAddr::Tcp(sa) => match sa.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback(),
            std::net::IpAddr::V6(ip) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        },
    }
}

/// Warns when `addr` can be reached from other machines: these protocols carry no
/// authentication, and every variable of a request (REMOTE_ADDR, HTTPS, SERVER_NAME...)
/// is chosen by whoever connects.
pub fn warn_if_reachable(addr: &ListenAddr) {
    if !is_local_only(addr) {
        tracing::warn!(
            listener = %addr,
            "this listener is reachable from other machines, and uwsgi/FastCGI/SCGI carry no authentication: anyone who can connect to it sends the request variables the app trusts (REMOTE_ADDR, HTTPS, SERVER_NAME, SCRIPT_NAME...); listen on 127.0.0.1 or a unix: socket, or let only the front server reach this address (firewall, private network)"
        );
    }
}

/// Where to listen: `HOST:PORT`, `[::1]:PORT`, `:PORT` (all interfaces), `unix:PATH`, or
/// a path that starts with `/` or `.` (a Unix socket too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/postern.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        // A bare path, as uWSGI's `socket = /run/app.sock` users write it: unambiguous
        // when it starts with `/` or `.` (no host name does).
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(a));
        }
        if !s.contains(':') {
            return Err(format!(
                "{s:?}: expected HOST:PORT, [IPv6]:PORT, unix:PATH or a path starting with / or ./"
            ));
        }
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| format!("{s:?}: cannot resolve: {e}"))?;
        addrs
            .next()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| format!("{s:?}: resolves to no address"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Options applied when binding.
#[derive(Debug, Clone, Default)]
pub struct SocketOptions {
    /// Permission bits for Unix sockets (`--socket-mode`).
    pub mode: Option<u32>,
    /// Owner for Unix sockets (`--socket-owner`).
    pub owner: Option<(Option<u32>, Option<u32>)>,
    pub backlog: i32,
    /// The user postern serves as once the listeners are bound (`--uid`): with root and
    /// the present user, the one whose socket directory is no warning.
    pub uid: Option<u32>,
}

/// A bound, listening socket, not yet registered with tokio.
#[derive(Debug)]
pub struct Bound {
    pub addr: ListenAddr,
    pub socket: BoundSocket,
    pub info: ListenerInfo,
    /// Passed in by systemd (LISTEN_FDS): never unlinked by postern.
    pub inherited: bool,
    /// The Unix socket's file when this process created it: removed when dropped. A
    /// TCP listener, an inherited socket and a [`Bound::try_clone`] have none.
    pub socket_file: Option<SocketFile>,
}

/// The file of a Unix socket this process bound, removed when the guard is dropped: at
/// a stop, and on every error path after the bind (a failed start leaves no socket
/// file behind).
///
/// Only the process that bound the socket removes it: a worker or helper forked from
/// the master has a copy of the guard in its memory, and the file must outlive it
/// (its siblings and successors keep serving on it). And only while the path still
/// names this socket: a server started meanwhile on the same path (after this one
/// stopped accepting, its socket looks stale) keeps its own file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// The process that bound the socket.
    pid: u32,
    /// Device and inode of the socket file as bound (`None`: it could not be read).
    id: Option<(u64, u64)>,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What happened to the socket file since the bind, if its path no longer names
    /// the socket: gone (deleted by hand, a tmp cleaner) or replaced. `None`: as bound
    /// (or not known).
    pub fn lost(&self) -> Option<&'static str> {
        let id = self.id?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == id => None,
            Ok(_) => Some("another file has its name now"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("it was deleted"),
            Err(_) => None,
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return;
        }
        let now = std::fs::symlink_metadata(&self.path).map(|m| (m.dev(), m.ino()));
        match (now, self.id) {
            (Ok(now), Some(id)) if now != id => {
                tracing::debug!(path = %self.path.display(), "the socket file was replaced by another server's; leaving it");
            }
            (Ok(_), _) => match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                // The usual case: --uid dropped root, and the directory is root's.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::warn!(
                    path = %self.path.display(),
                    "cannot remove the Unix socket file: postern's user (uid {}) may not write in its directory; the next start removes it as a stale socket (to have it removed at the stop, make the directory this user's: systemd `RuntimeDirectory=` with `User=`)",
                    rustix::process::geteuid().as_raw()
                ),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the Unix socket file")
                }
            },
            (Err(_), _) => {} // already gone
        }
    }
}

#[derive(Debug)]
pub enum BoundSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Makes a listening socket take no new connections, while the ones already in its
/// accept queue can still be accepted, so a stopping server can serve its queue and then
/// close without resetting anyone. What a refused client sees: nginx gets "connection
/// refused" and tries the next upstream, a POST included (nothing was sent).
///
/// - Unix: `shutdown(SHUT_RD)` on the listener; new connects get ECONNREFUSED at once
///   and the queue stays acceptable.
/// - TCP: `shutdown` on a listener would reset the whole queue, so a classic BPF
///   socket filter that drops new connection requests (SYN without ACK) is attached
///   instead: a new SYN goes unanswered, the client sends it again a second later, and
///   by then the listener is closed and answers with a reset (ECONNREFUSED). Every
///   other packet passes, so a handshake already under way (its last ACK, and the
///   request that TCP_DEFER_ACCEPT waits for) still completes into the queue.
///
/// The socket is shared by every process holding a copy of it, so one call affects all.
pub fn refuse_new_connections(sock: &Socket, tcp: bool) -> io::Result<()> {
    if !tcp {
        return sock.shutdown(std::net::Shutdown::Read);
    }
    // Classic BPF opcodes (linux/filter.h). A socket filter on TCP sees the packet from
    // the TCP header on: byte 13 holds the flags (0x02 SYN, 0x10 ACK).
    const LD_B_ABS: u16 = 0x30; // A = byte at k
    const AND_K: u16 = 0x54; // A &= k
    const JEQ_K: u16 = 0x15; // if A == k skip jt else skip jf
    const RET_K: u16 = 0x06; // return k bytes of the packet (0: drop it)
    const TCP_FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    use socket2::SockFilter as F;
    sock.attach_filter(&[
        F::new(LD_B_ABS, 0, 0, TCP_FLAGS),
        F::new(AND_K, 0, 0, SYN | ACK),
        F::new(JEQ_K, 0, 1, SYN), // a bare SYN: drop; anything else: keep
        F::new(RET_K, 0, 0, 0),
        F::new(RET_K, 0, 0, u32::MAX),
    ])
}

impl Bound {
    /// See [`refuse_new_connections`].
    pub fn refuse_new_connections(&self) -> io::Result<()> {
        match &self.socket {
            BoundSocket::Tcp(l) => refuse_new_connections(&socket2::SockRef::from(l), true),
            BoundSocket::Unix(l) => refuse_new_connections(&socket2::SockRef::from(l), false),
        }
    }

    /// Takes every connection waiting in the listen queue now and closes it (the
    /// listener is non-blocking): the master's count, at a second signal, of what
    /// nobody will serve (the workers take from the queue only what they can start).
    /// How many it took.
    pub fn take_waiting(&self) -> usize {
        let mut n = 0;
        // Bounded: the queue holds at most the listen backlog (and no new connection
        // joins it once the stop has begun).
        while n < 1 << 20 {
            let taken = match &self.socket {
                BoundSocket::Tcp(l) => l.accept().map(drop),
                BoundSocket::Unix(l) => l.accept().map(drop),
            };
            match taken {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        n
    }

    /// The listening socket's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match &self.socket {
            BoundSocket::Tcp(l) => l.as_fd(),
            BoundSocket::Unix(l) => l.as_fd(),
        }
    }

    /// Another handle on the same listening socket (for a forked worker).
    pub fn try_clone(&self) -> std::io::Result<Bound> {
        Ok(Bound {
            addr: self.addr.clone(),
            socket: match &self.socket {
                BoundSocket::Tcp(l) => BoundSocket::Tcp(l.try_clone()?),
                BoundSocket::Unix(l) => BoundSocket::Unix(l.try_clone()?),
            },
            info: self.info.clone(),
            inherited: self.inherited,
            // The file stays with the original (see [`SocketFile`]).
            socket_file: None,
        })
    }
}

/// What one of the fds LISTEN_FDS names was when the process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Passed {
    Socket,
    NotOpen,
    NotSocket,
}

/// The fds LISTEN_FDS names, as they were at the process's start (see
/// [`note_systemd_fds`]): the open ones and the first [`NAMED_CLOSED`] of those that
/// are not, and how many more are not (or lie past the open-file limit).
static SYSTEMD_FDS: std::sync::OnceLock<(Vec<(i32, Passed)>, i64)> = std::sync::OnceLock::new();

/// Looks at the fds systemd passed to this process (sd_listen_fds(3)): 3 up to 3 +
/// LISTEN_FDS, when LISTEN_PID names this process. Called first thing in `main`,
/// before postern opens any file of its own: an fd found open later may be postern's
/// (its log file), not systemd's, when LISTEN_FDS names more fds than were passed.
/// regression (probe 393): with LISTEN_FDS=2 and one fd passed, postern took its own
/// log file's fd 3 as systemd's, closed it as no socket, and its log lines then went
/// to whatever reused fd 3 (a socket).
pub fn note_systemd_fds() {
    SYSTEMD_FDS.get_or_init(scan_systemd_fds);
}

fn scan_systemd_fds() -> (Vec<(i32, Passed)>, i64) {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i64 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || n <= 0 {
        return (Vec::new(), 0);
    }
    // No fd at or past the hard open-file limit can be open (one past the soft limit
    // can: passed before it was lowered), and none past MAX_SCAN is looked at: a
    // LISTEN_FDS of millions is not millions of system calls.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or(MAX_SCAN, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let end = n.saturating_add(3).min(limit.clamp(3, MAX_SCAN));
    let mut unsaid = n.saturating_add(3) - end;
    let mut fds = Vec::new();
    let mut closed = 0;
    for fd in 3..end {
        let fd = fd as i32;
        // SAFETY: the borrow only lives for these queries; on an fd that is not
        // open, fcntl(F_GETFD) fails with EBADF and touches nothing.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let what = if rustix::io::fcntl_getfd(b).is_err() {
            Passed::NotOpen
        } else if rustix::net::sockopt::socket_type(b).is_err() {
            Passed::NotSocket
        } else {
            Passed::Socket
        };
        if what == Passed::NotOpen {
            closed += 1;
            if closed > NAMED_CLOSED {
                unsaid += 1;
                continue;
            }
        }
        fds.push((fd, what));
    }
    (fds, unsaid)
}

/// The most fds LISTEN_FDS may name that are looked at.
const MAX_SCAN: i64 = 1 << 20;
/// The fds LISTEN_FDS names that are not open said one by one; the rest are counted.
const NAMED_CLOSED: i64 = 8;

/// The sockets among the fds systemd passed (see [`note_systemd_fds`]); `say`: warn
/// about the others (once, where the listeners are taken).
fn systemd_fds(say: bool) -> Vec<i32> {
    let (fds, unsaid) = SYSTEMD_FDS.get_or_init(scan_systemd_fds);
    let sockets = fds
        .iter()
        .filter(|(fd, what)| {
            match what {
                Passed::Socket => return true,
                Passed::NotOpen if say => {
                    tracing::warn!(fd, "LISTEN_FDS names fd {fd}, but it is not open; ignored")
                }
                Passed::NotSocket if say => tracing::warn!(
                    fd,
                    "LISTEN_FDS names fd {fd}, which is not a socket; ignored (left open)"
                ),
                _ => {}
            }
            false
        })
        .map(|(fd, _)| *fd)
        .collect();
    if say && *unsaid > 0 {
        tracing::warn!(
            unsaid,
            "LISTEN_FDS names {unsaid} more fd(s) that are not open (or past the open-file limit, ulimit -n); ignored"
        );
    }
    sockets
}

/// A socket's own address as a listener address (an unnamed Unix socket has none).
fn listen_addr(local: &SockAddr) -> Option<ListenAddr> {
    use std::os::unix::ffi::OsStrExt;
    match (local.as_socket(), local.as_pathname()) {
        (Some(sa), _) => Some(ListenAddr::Tcp(sa)),
        (None, Some(path)) => Some(ListenAddr::Unix(path.to_owned())),
        // An abstract socket (systemd `ListenStream=@name`), written `@name` as systemd
        // and ss write it. A configured path never reads so: it is made absolute.
        (None, None) => local
            .as_abstract_namespace()
            .map(|name| ListenAddr::Unix(PathBuf::from(OsStr::from_bytes(&[b"@", name].concat())))),
    }
}

/// The addresses of the sockets systemd passed, without taking them (`--check`).
pub fn systemd_addrs() -> Vec<ListenAddr> {
    systemd_fds(false)
        .into_iter()
        .filter_map(|fd| {
            // SAFETY: the fd was a socket passed at the start (see note_systemd_fds)
            // and postern closes none of them before this; only borrowed to read its
            // address.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            listen_addr(&socket2::SockRef::from(&fd).local_addr().ok()?)
        })
        .collect()
}

/// Listening sockets passed by systemd socket activation (LISTEN_PID / LISTEN_FDS,
/// sd_listen_fds(3)); the variables are removed so children do not take them again.
pub fn systemd_listeners() -> Vec<Bound> {
    share_accept_turns();
    // Taken once: a second call would own the same fds twice.
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return Vec::new();
    }
    let fds = systemd_fds(true);
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let mut out = Vec::new();
    for fd in fds {
        // SAFETY: a socket open at the process's start among the fds LISTEN_FDS
        // names (note_systemd_fds), so passed by systemd, not opened by postern; taken
        // once (the variables are removed above), so it is ours alone now.
        let sock = unsafe { <socket2::Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = sock.set_nonblocking(true);
        let _ = sock.set_cloexec(true);
        let Some(addr) = sock.local_addr().ok().as_ref().and_then(listen_addr) else {
            tracing::warn!(
                fd,
                "systemd passed fd {fd}, which is neither a TCP socket nor a named Unix socket; ignored"
            );
            continue;
        };
        let (socket, server_name, server_port) = match &addr {
            ListenAddr::Tcp(sa) => (
                BoundSocket::Tcp(sock.into()),
                sa.ip().to_string(),
                sa.port().to_string(),
            ),
            ListenAddr::Unix(_) => (
                BoundSocket::Unix(sock.into()),
                "localhost".to_owned(),
                "80".to_owned(),
            ),
        };
        out.push(Bound {
            addr,
            socket,
            info: ListenerInfo {
                protocol: Default::default(),
                server_name: Arc::from(server_name.as_bytes()),
                server_port: Arc::from(server_port.as_bytes()),
            },
            inherited: true,
            socket_file: None,
        });
    }
    out
}

/// Binds and listens.
pub fn bind(addr: &ListenAddr, opts: &SocketOptions) -> Result<Bound, ServerError> {
    share_accept_turns();
    let err = |cause: io::Error| ServerError::from(BindError::from_io(addr, cause));
    match addr {
        ListenAddr::Tcp(sa) => {
            // An IPv4-mapped address ([::ffff:127.0.0.1]) is the IPv4 one; the IPv6-only
            // socket below could not bind it (EINVAL).
            let sa = match sa {
                SocketAddr::V6(v6) => v6
                    .ip()
                    .to_ipv4_mapped()
                    .map_or(*sa, |v4| SocketAddr::from((v4, v6.port()))),
                SocketAddr::V4(_) => *sa,
            };
            let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            if sa.is_ipv6() {
                socket.set_only_v6(true).map_err(err)?;
            }
            socket.bind(&SockAddr::from(sa)).map_err(err)?;
            socket.listen(opts.backlog).map_err(err)?;
            // TCP_DEFER_ACCEPT (as uWSGI does by default): the kernel hands over a
            // connection once its first bytes are there, so the first read almost
            // always finds the whole request. A silent peer is passed on after
            // about a second anyway and meets --head-timeout. Through libc: neither
            // rustix nor socket2 has this option.
            let secs: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own, with a c_int value of the right size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&secs as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.set_nonblocking(true).map_err(err)?;
            let listener: std::net::TcpListener = socket.into();
            let local = listener.local_addr().map_err(err)?;
            Ok(Bound {
                addr: ListenAddr::Tcp(local),
                socket: BoundSocket::Tcp(listener),
                info: ListenerInfo {
                    protocol: Default::default(),
                    server_name: Arc::from(local.ip().to_string().as_bytes()),
                    server_port: Arc::from(local.port().to_string().as_bytes()),
                },
                inherited: false,
                socket_file: None,
            })
        }
        ListenAddr::Unix(path) => bind_unix(addr, path, opts),
    }
}

/// Taken around a Unix bind and the umask it sets (see [`bind_unix`]).
static UMASK_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Binds a Unix socket at `path` so that nobody else who can write in its directory
/// can turn the bind against postern (which often runs as root at this point):
///
/// - The directory is opened once and checked through that fd: it exists, it is a
///   directory, and whether it is writable by every user without the sticky bit (there,
///   anyone could replace the socket with their own after the start and receive the
///   requests: a warning, as a pod's emptyDir is such a directory and is private).
///   Symbolic links in the directory part are followed: that path is the operator's
///   (`/var/run` → `/run`).
/// - What is at the socket's name is looked at through the directory fd, without
///   following a symbolic link: nothing → bind; a socket nobody answers on → removed
///   (it is stale), then bind; a live socket, a symbolic link (wherever it points), a
///   regular file, a directory, anything else → refused and left untouched.
/// - bind(2) never follows a symbolic link at the last component (an existing name of
///   any kind makes it fail with EADDRINUSE), so a link planted after the check cannot
///   redirect the socket. The mode is applied by the umask in force during the bind,
///   not by a chmod afterwards (chmod follows links: a link swapped in between would
///   make root chmod its target); the owner by fchownat(AT_SYMLINK_NOFOLLOW) in the
///   directory fd.
/// - After the bind, the name must hold a socket owned by this process's user, in the
///   directory that was checked (same device and inode), with the mode asked for;
///   otherwise the start stops: someone used the window between the check and the bind.
///
/// The path is bound as given rather than as `/proc/self/fd/N/NAME` (which would pin
/// the directory): the kernel records the bound path, and `ss -lx`, `/proc/net/unix`
/// and every error message here would then show the /proc path instead of the real one.
fn bind_unix(addr: &ListenAddr, path: &Path, opts: &SocketOptions) -> Result<Bound, ServerError> {
    let err = |cause: io::Error| ServerError::from(BindError::from_io(addr, cause));
    let (dir, name) = split_socket_path(addr, path)?;
    let dirfd = open_socket_dir(addr, dir, opts)?;
    clear_stale_socket(addr, path, &dirfd, name)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    let sockaddr = SockAddr::unix(path).map_err(err)?;
    // The umask is process-wide: this runs at start (and in --check), while no other
    // thread of postern's creates files; binds in one process (the unit tests run many
    // at once) take turns, so each sees the umask the process had, not another bind's.
    let turn = UMASK_TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bound = match opts.mode {
        Some(mode) => {
            let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(!mode & 0o777));
            let r = socket.bind(&sockaddr);
            rustix::process::umask(old);
            r
        }
        None => socket.bind(&sockaddr),
    };
    drop(turn);
    bound.map_err(err)?;
    let raced = |what: &'static str, detail: String| {
        ServerError::from(BindError::Raced {
            addr: addr.clone(),
            what,
            detail,
        })
    };
    let meta = rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| raced("the socket file", format!("it is gone: {e}")))?;
    let kind = FileType::from_raw_mode(meta.st_mode);
    let euid = rustix::process::geteuid().as_raw();
    if kind != FileType::Socket || meta.st_uid != euid {
        return Err(raced(
            "the socket file",
            format!(
                "{} owned by uid {} instead of a socket of uid {euid}",
                describe(kind),
                meta.st_uid
            ),
        ));
    }
    // From here on, any error return drops the guard, which removes the file.
    let socket_file = SocketFile {
        path: path.to_owned(),
        pid: std::process::id(),
        id: Some((meta.st_dev, meta.st_ino)),
    };
    let here = rustix::fs::fstat(&dirfd).map_err(|e| err(e.into()))?;
    match rustix::fs::stat(dir) {
        Ok(now) if (now.st_dev, now.st_ino) == (here.st_dev, here.st_ino) => {}
        other => {
            // Not ours to remove: the name now resolves somewhere else.
            std::mem::forget(socket_file);
            return Err(raced(
                "the directory",
                match other {
                    Ok(_) => format!("{} now names another directory", dir.display()),
                    Err(e) => format!("{}: {e}", dir.display()),
                },
            ));
        }
    }
    let apply = |option: &'static str, cause: io::Error| {
        ServerError::from(BindError::Apply {
            addr: addr.clone(),
            option,
            cause,
        })
    };
    if let Some(mode) = opts.mode {
        if meta.st_mode & 0o777 != mode {
            // A default ACL on the directory narrowed what the umask gave: set the
            // mode on the very file just checked.
            chmod_socket(&dirfd, name, (meta.st_dev, meta.st_ino), mode)
                .map_err(|e| apply("--socket-mode", e))?;
        }
    }
    if opts.mode.is_none() && meta.st_mode & 0o002 != 0 {
        // regression (sec M4): with umask 000 the socket was born srwxrwxrwx, and
        // nothing said so. Connecting needs write permission: every local user could
        // send the request variables the app trusts. Not refused (a container whose
        // only users are nginx and postern may want it), but said, as --socket-mode 666
        // typed on purpose is not.
        tracing::warn!(
            listener = %addr,
            "the Unix socket is mode {:o} (from the umask, no --socket-mode): every local user can connect to it and send the request variables the app trusts (REMOTE_ADDR, HTTPS, SCRIPT_NAME...), as the front server does; give --socket-mode 660 --socket-owner USER:GROUP (the front server's group), or --socket-mode 666 if every local user is to be trusted",
            meta.st_mode & 0o777
        );
    }
    if let Some((uid, gid)) = opts.owner {
        rustix::fs::chownat(
            &dirfd,
            name,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| apply("--socket-owner (changing an owner needs root)", e.into()))?;
    }
    socket
        .listen(opts.backlog)
        .and_then(|()| socket.set_nonblocking(true))
        .map_err(err)?;
    Ok(Bound {
        addr: addr.clone(),
        socket: BoundSocket::Unix(socket.into()),
        info: ListenerInfo {
            protocol: Default::default(),
            server_name: Arc::from(&b"localhost"[..]),
            server_port: Arc::from(&b"80"[..]),
        },
        inherited: false,
        socket_file: Some(socket_file),
    })
}

/// chmod of the socket file `name` in `dirfd` whose device and inode are `id`, without
/// following a link: through an `O_PATH | O_NOFOLLOW` fd of it (checked to be that
/// file) and its /proc/self/fd entry, as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does
/// (rustix has no such call on Linux before fchmodat2).
fn chmod_socket(dirfd: &OwnedFd, name: &OsStr, id: (u64, u64), mode: u32) -> io::Result<()> {
    use rustix::fs::OFlags;
    let fd = rustix::fs::openat(
        dirfd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let now = rustix::fs::fstat(&fd)?;
    if (now.st_dev, now.st_ino) != id || FileType::from_raw_mode(now.st_mode) != FileType::Socket {
        return Err(io::Error::other(
            "the socket file was replaced before its mode could be set",
        ));
    }
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    rustix::fs::chmod(proc.as_str(), rustix::fs::Mode::from_bits_truncate(mode))?;
    Ok(())
}

/// The longest path a Unix socket can be bound at: `sun_path` is 108 bytes, NUL
/// included.
const MAX_UNIX_PATH: usize = 107;

/// `path` as its directory (`.` for a bare name) and its last component.
fn split_socket_path<'p>(
    addr: &ListenAddr,
    path: &'p Path,
) -> Result<(&'p Path, &'p OsStr), BindError> {
    let invalid = |why: String| BindError::Other {
        addr: addr.clone(),
        cause: io::Error::new(io::ErrorKind::InvalidInput, why),
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    // Path::file_name reads `dir/name/` as `name`, but bind(2) takes the whole path and
    // fails with a bare ENOENT.
    let Some(name) = path.file_name().filter(|_| !bytes.ends_with(b"/")) else {
        return Err(invalid(
            "the path names no file (it ends with `/` or `..`); give DIRECTORY/NAME".into(),
        ));
    };
    // sockaddr_un holds 108 bytes with the final NUL (unix(7)).
    if bytes.len() > MAX_UNIX_PATH {
        return Err(invalid(format!(
            "the path is {} bytes long, and a Unix socket's path can have at most {MAX_UNIX_PATH} (unix(7)); choose a shorter one (e.g. under /run)",
            bytes.len()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Opens the socket's directory (following links in its path) and checks it: see
/// [`bind_unix`].
fn open_socket_dir(
    addr: &ListenAddr,
    dir: &Path,
    opts: &SocketOptions,
) -> Result<OwnedFd, BindError> {
    use rustix::fs::OFlags;
    let fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOTDIR => BindError::NotADirectory {
            addr: addr.clone(),
            dir: dir.display().to_string(),
        },
        // NOENT: NoDirectory, with the way to create it.
        e => BindError::from_io(addr, e.into()),
    })?;
    let meta = rustix::fs::fstat(&fd).map_err(|e| BindError::from_io(addr, e.into()))?;
    let mode = meta.st_mode;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        // A warning, not a refusal: a Kubernetes emptyDir shared by nginx and postern is
        // mode 0777 without the sticky bit, and private to the pod.
        tracing::warn!(
            listener = %addr,
            "the socket's directory {} is writable by every user and has no sticky bit: anyone who can write there can replace the socket after the start and receive the requests; use a directory only postern's user can write (systemd: `RuntimeDirectory=`), or `chmod +t` it (harmless where only trusted processes share it, e.g. a Kubernetes emptyDir private to the pod)",
            dir.display()
        );
    }
    // The owner of a directory may rename or remove anything in it, sticky bit or not.
    let owner = meta.st_uid;
    let euid = rustix::process::geteuid().as_raw();
    if owner != 0 && owner != euid && Some(owner) != opts.uid {
        tracing::warn!(
            listener = %addr,
            "the socket's directory {} belongs to uid {owner}, who is neither root nor postern's user: that user can replace the socket after the start and receive the requests; use a directory of root's or of postern's user",
            dir.display()
        );
    }
    // Said before the bind, in the same words bind's EACCES gets (root passes unless
    // the file system is read-only).
    if let Err(e) = rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    ) {
        return Err(BindError::from_io(addr, e.into()));
    }
    Ok(fd)
}

/// A file type in words, for the errors.
fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// What is at the socket's name (looked at in `dirfd`, never following a link): a
/// stale socket is removed, anything else that exists is refused (see [`bind_unix`]).
fn clear_stale_socket(
    addr: &ListenAddr,
    path: &Path,
    dirfd: &OwnedFd,
    name: &OsStr,
) -> Result<(), BindError> {
    let meta = match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(m) => m,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(BindError::from_io(addr, e.into())),
    };
    let kind = FileType::from_raw_mode(meta.st_mode);
    if kind != FileType::Socket {
        let kind = match kind {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dirfd, name, Vec::new())
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "?".into());
                format!("it is a symbolic link to {target}; postern never follows one at the socket path")
            }
            k => format!("it is {}", describe(k)),
        };
        return Err(BindError::NotASocket {
            addr: addr.clone(),
            path: path.to_owned(),
            kind,
        });
    }
    // The socket was checked through the directory fd; connect(2) takes a path (the
    // same one bind will use). Non-blocking: a blocking connect to a server whose
    // listen queue is full (wedged, or stopped with SIGSTOP) waits for a free slot, and
    // the start would hang there without a word; EAGAIN means someone listens.
    let probe = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)
        .map_err(|e| BindError::from_io(addr, e))?;
    let target = SockAddr::unix(path).map_err(|e| BindError::from_io(addr, e))?;
    match probe.connect(&target) {
        Ok(()) => Err(BindError::LiveSocket {
            addr: addr.clone(),
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(BindError::LiveSocket {
            addr: addr.clone(),
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale Unix socket left by an earlier run");
            match rustix::fs::unlinkat(dirfd, name, AtFlags::empty()) {
                Ok(()) => Ok(()),
                // The directory is writable (checked), so this is the sticky bit: the
                // stale socket is another user's.
                Err(Errno::PERM | Errno::ACCESS) => Err(BindError::StaleForeign {
                    addr: addr.clone(),
                    path: path.to_owned(),
                    owner: meta.st_uid,
                    uid: rustix::process::geteuid().as_raw(),
                }),
                Err(e) => Err(BindError::from_io(addr, e.into())),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(BindError::ForeignSocket {
            addr: addr.clone(),
            path: path.to_owned(),
            uid: rustix::process::geteuid().as_raw(),
        }),
        Err(e) => Err(BindError::from_io(addr, e)),
    }
}

/// Looks up `USER[:GROUP]` (names or numeric ids) for `--socket-owner`.
pub fn parse_owner(spec: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = if user.is_empty() {
        None
    } else if let Ok(n) = user.parse() {
        Some(n)
    } else {
        let u = crate::users::user_by_name(user)
            .map_err(|e| format!("looking up user {user:?}: {e}"))?
            .ok_or_else(|| format!("no such user {user:?}"))?;
        Some(u.uid)
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(match g.parse() {
            Ok(n) => n,
            Err(_) => crate::users::gid_by_name(g)
                .map_err(|e| format!("looking up group {g:?}: {e}"))?
                .ok_or_else(|| format!("no such group {g:?}"))?,
        }),
    };
    if uid.is_none() && gid.is_none() {
        // regression: `--socket-owner :` was taken, changing nothing, in silence.
        return Err(format!(
            "{spec:?} names neither a user nor a group: give USER, USER:GROUP or :GROUP"
        ));
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_naming_nobody_is_refused() {
        assert!(parse_owner(":")
            .unwrap_err()
            .contains("names neither a user nor a group"));
        assert!(parse_owner("").is_err());
        assert_eq!(parse_owner("0"), Ok((Some(0), None)));
        assert_eq!(parse_owner(":0"), Ok((None, Some(0))));
        assert_eq!(parse_owner("0:"), Ok((Some(0), None)));
    }

    /// Queued connections stay acceptable with their bytes; new ones are refused once
    /// the listener closes (TCP: the dropped SYN is sent again and meets the reset).
    #[test]
    fn refusing_new_connections_keeps_the_queue() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let opts = SocketOptions {
            backlog: 16,
            ..Default::default()
        };
        for addr in [
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            ListenAddr::Unix(dir.path().join("q.sock")),
        ] {
            let b = bind(&addr, &opts).unwrap();
            let connect = || -> io::Result<Box<dyn Write>> {
                Ok(match &b.addr {
                    ListenAddr::Tcp(sa) => Box::new(std::net::TcpStream::connect(sa)?),
                    ListenAddr::Unix(p) => Box::new(std::os::unix::net::UnixStream::connect(p)?),
                })
            };
            let mut queued = connect().unwrap();
            queued.write_all(b"queued").unwrap();
            b.refuse_new_connections().unwrap();
            let late = std::thread::spawn({
                let addr = b.addr.clone();
                move || match addr {
                    ListenAddr::Tcp(sa) => std::net::TcpStream::connect_timeout(
                        &sa,
                        std::time::Duration::from_secs(10),
                    )
                    .map(drop),
                    ListenAddr::Unix(p) => std::os::unix::net::UnixStream::connect(p).map(drop),
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut got = Vec::new();
            let mut accepted = 0;
            loop {
                let r = match &b.socket {
                    BoundSocket::Tcp(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Read>),
                    BoundSocket::Unix(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Read>),
                };
                match r {
                    Ok(mut s) => {
                        accepted += 1;
                        let mut buf = [0u8; 6];
                        s.read_exact(&mut buf).unwrap();
                        got.extend_from_slice(&buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{addr}: accept: {e}"),
                }
            }
            assert_eq!((accepted, &got[..]), (1, &b"queued"[..]), "{addr}");
            drop(b);
            let e = late.join().unwrap().expect_err("a new connection got in");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{addr}: {e}");
        }
    }

    #[test]
    fn a_unix_listener_removes_its_socket_file_when_dropped_and_a_clone_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let b = bind(&ListenAddr::Unix(path.clone()), &SocketOptions::default()).unwrap();
        assert_eq!(
            b.socket_file.as_ref().map(SocketFile::path),
            Some(path.as_path())
        );
        drop(b.try_clone().unwrap());
        assert!(
            path.exists(),
            "a clone (a worker's handle) removed the file"
        );
        drop(b);
        assert!(
            !path.exists(),
            "the socket file is left after the listener is gone"
        );
        let tcp = bind(&"127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
        assert!(tcp.socket_file.is_none());
    }

    #[test]
    fn a_socket_file_replaced_by_another_server_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let addr = ListenAddr::Unix(path.clone());
        let old = bind(&addr, &SocketOptions::default()).unwrap();
        // A successor took the path (the old socket looked stale to it, or was deleted).
        std::fs::remove_file(&path).unwrap();
        let new = bind(&addr, &SocketOptions::default()).unwrap();
        drop(old);
        assert!(
            path.exists(),
            "the old listener removed its successor's socket file"
        );
        drop(new);
        assert!(!path.exists());
    }

    #[test]
    fn a_forked_child_dropping_the_guard_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sock");
        let b = bind(&ListenAddr::Unix(path.clone()), &SocketOptions::default()).unwrap();
        // SAFETY: the child only drops the guard (a stat, no lock another test thread
        // may hold beyond malloc's, which glibc's fork resets) and leaves with _exit.
        // Through libc: rustix has no fork.
        match unsafe { libc::fork() } {
            0 => {
                drop(b);
                // SAFETY: leave the forked test process without running destructors.
                unsafe { libc::_exit(0) }
            }
            pid => {
                assert!(pid > 0, "fork: {}", io::Error::last_os_error());
                let pid = rustix::process::Pid::from_raw(pid).unwrap();
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap();
            }
        }
        assert!(
            path.exists(),
            "a forked child removed its parent's socket file"
        );
        drop(b);
        assert!(!path.exists());
    }

    fn unix_err(path: &Path, opts: &SocketOptions) -> String {
        bind(&ListenAddr::Unix(path.to_owned()), opts)
            .expect_err("bound")
            .to_string()
    }

    #[test]
    fn a_symlink_at_the_socket_path_is_refused_wherever_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        std::fs::write(&precious, "keep").unwrap();
        let live = dir.path().join("live.sock");
        let _live = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        for target in [precious.clone(), live, stale, dir.path().join("nowhere")] {
            let link = dir.path().join("app.sock");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = unix_err(&link, &SocketOptions::default());
            assert!(
                e.contains(&format!(
                    "is a symbolic link to {}; postern never follows one",
                    target.display()
                )),
                "{e}"
            );
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                target,
                "the link was replaced"
            );
        }
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");
    }

    #[test]
    fn a_directory_or_regular_file_at_the_socket_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = unix_err(&sub, &SocketOptions::default());
        assert!(
            e.contains("exists and is not a socket (it is a directory)"),
            "{e}"
        );
        assert!(sub.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = unix_err(&file, &SocketOptions::default());
        assert!(e.contains("(it is a regular file)"), "{e}");
    }

    #[test]
    fn the_socket_directory_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = unix_err(&file.join("s.sock"), &SocketOptions::default());
        assert!(
            e.contains(&format!("{} is not a directory", file.display())),
            "{e}"
        );

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        // Warned about (see the black-box test), bound.
        bind(
            &ListenAddr::Unix(open.join("s.sock")),
            &SocketOptions::default(),
        )
        .unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind(
            &ListenAddr::Unix(open.join("s.sock")),
            &SocketOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn the_mode_is_set_by_the_bind_and_the_umask_restored() {
        let dir = tempfile::tempdir().unwrap();
        // Set and read back in turn with the binds of the tests running beside this one.
        let umask = |m: u32| {
            let _turn = super::UMASK_TURN.lock().unwrap_or_else(|e| e.into_inner());
            rustix::process::umask(rustix::fs::Mode::from_bits_truncate(m))
        };
        let before = umask(0o022);
        for mode in [0o600, 0o660, 0o666, 0o777] {
            let path = dir.path().join(format!("m{mode:o}.sock"));
            let opts = SocketOptions {
                mode: Some(mode),
                ..Default::default()
            };
            let _b = bind(&ListenAddr::Unix(path.clone()), &opts).unwrap();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o7777, mode);
        }
        let now = umask(before.bits());
        assert_eq!(now.bits(), 0o022);
    }

    /// A default ACL on the directory narrows the mode bind gives: the mode is then set
    /// on the file afterwards (never through a link).
    #[test]
    fn the_mode_is_right_under_a_default_acl_too() {
        let dir = tempfile::tempdir().unwrap();
        // system.posix_acl_default: version 2, then (tag, perm, id) entries: user::rwx,
        // group::---, other::--- (ACL_USER_OBJ 0x01, ACL_GROUP_OBJ 0x04, ACL_OTHER 0x20).
        // The kernel applies the umask and then this ACL: the socket is born 0600.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        match rustix::fs::setxattr(
            dir.path(),
            "system.posix_acl_default",
            &acl,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("SKIPPED: this file system takes no default ACL here ({e})");
                return;
            }
        }
        let path = dir.path().join("acl.sock");
        let opts = SocketOptions {
            mode: Some(0o660),
            ..Default::default()
        };
        let _b = bind(&ListenAddr::Unix(path.clone()), &opts).unwrap();
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().mode() & 0o7777,
            0o660
        );
    }

    #[test]
    fn only_loopback_and_unix_sockets_are_local() {
        for (a, local) in [
            ("127.0.0.1:1", true),
            ("127.1.2.3:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("unix:/run/x.sock", true),
            (":1", false),
            ("0.0.0.0:1", false),
            ("[::]:1", false),
            ("10.0.0.1:1", false),
            ("[::ffff:10.0.0.1]:1", false),
        ] {
            assert_eq!(is_local_only(&a.parse().unwrap()), local, "{a}");
        }
    }

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "127.0.0.1:3031".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:3031".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:3031".parse(),
            Ok(ListenAddr::Tcp("[::1]:3031".parse().unwrap()))
        );
        assert_eq!(
            ":3031".parse(),
            Ok(ListenAddr::Tcp("0.0.0.0:3031".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/p.sock".parse(),
            Ok(ListenAddr::Unix("/run/p.sock".into()))
        );
        assert_eq!(
            "/run/p.sock".parse(),
            Ok(ListenAddr::Unix("/run/p.sock".into()))
        );
        assert_eq!("./p.sock".parse(), Ok(ListenAddr::Unix("./p.sock".into())));
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("nonsense".parse::<ListenAddr>().is_err());
        assert!("p.sock".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn names_a_missing_socket_directory_and_how_to_make_it() {
        let addr: ListenAddr = "unix:/run/postern-test-none/app.sock".parse().unwrap();
        let e = BindError::from_io(&addr, Errno::NOENT.into());
        assert_eq!(
            e.to_string(),
            "cannot listen on unix:/run/postern-test-none/app.sock: the directory \
             /run/postern-test-none does not exist; create it (`mkdir -p \
             /run/postern-test-none`, or `RuntimeDirectory=postern-test-none` in the \
             systemd unit) or choose another path"
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause is said once"
        );
    }

    #[test]
    fn says_an_address_is_in_use_and_how_to_find_the_holder() {
        let tcp: ListenAddr = "127.0.0.1:3031".parse().unwrap();
        let e = BindError::from_io(&tcp, Errno::ADDRINUSE.into());
        assert!(
            e.to_string().contains("already in use")
                && e.to_string().contains("`ss -tanp 'sport = :3031'`"),
            "{e}"
        );
        let unix: ListenAddr = "unix:/tmp/a.sock".parse().unwrap();
        let e = BindError::from_io(&unix, Errno::ADDRINUSE.into());
        assert!(
            e.to_string().contains("`ss -lxp | grep /tmp/a.sock`"),
            "{e}"
        );
    }

    // regression: every Unix socket was written `unix:PATH|uwsgi://localhost/`, and
    // Apache sends all ProxyPass lines sharing that name to the first one's socket.
    #[test]
    fn apache_worker_names_differ_per_socket() {
        let name = |p: &str| apache_worker_name(Path::new(p));
        // The readable part, then six hex digits of the whole path.
        let readable = |p: &str| {
            let n = name(p);
            assert_eq!(n.as_bytes()[n.len() - 7], b'-', "{n}");
            assert!(
                n[n.len() - 6..].bytes().all(|b| b.is_ascii_hexdigit()),
                "{n}"
            );
            n[..n.len() - 7].to_owned()
        };
        assert_eq!(name("/run/shop/postern.sock"), "shop-postern-60d94c");
        assert_eq!(readable("/run/postern/postern.sock"), "postern");
        assert_eq!(readable("/tmp/My App_2/web.fcgi.sock"), "my-app-2-web-fcgi");
        assert_eq!(readable("/é/.sock"), "sock");
        assert_eq!(readable("/__"), "postern");
        // Apache refuses an all-digit host name.
        assert_eq!(readable("/run/1000/1000.sock"), "postern-1000");
        assert_eq!(readable("/9.sock"), "postern-9");
        let long = name(&format!("/{}/x.sock", "a".repeat(80)));
        assert!(long.len() <= 63, "{long}");
        // regression (review): the same directory and file names, or names that read
        // alike (`a-b/c`, `a/b-c`), gave one name to two sockets.
        assert_ne!(
            name("/srv/shop/run/app.sock"),
            name("/srv/blog/run/app.sock")
        );
        assert_ne!(name("/run/a-b/c.sock"), name("/run/a/b-c.sock"));
    }

    #[test]
    fn points_front_servers_at_each_listener() {
        let unix: ListenAddr = "unix:/run/postern/app.sock".parse().unwrap();
        assert_eq!(
            front_server_lines(Protocol::Uwsgi, &unix),
            (
                "uwsgi_pass unix:/run/postern/app.sock;".to_owned(),
                r#"ProxyPass "/" "unix:/run/postern/app.sock|uwsgi://postern-app-5f1e25/""#
                    .to_owned()
            )
        );
        let any: ListenAddr = ":9000".parse().unwrap();
        assert_eq!(
            front_server_lines(Protocol::FastCgi, &any),
            (
                "fastcgi_pass 127.0.0.1:9000;".to_owned(),
                r#"ProxyPass "/" "fcgi://127.0.0.1:9000/""#.to_owned()
            )
        );
        let v6: ListenAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(
            front_server_lines(Protocol::Scgi, &v6).0,
            "scgi_pass [::1]:4000;"
        );
    }

    #[test]
    fn parses_owners() {
        assert_eq!(parse_owner("0:0"), Ok((Some(0), Some(0))));
        assert_eq!(parse_owner("root"), Ok((Some(0), None)));
        assert_eq!(parse_owner(":0"), Ok((None, Some(0))));
        assert!(parse_owner("no-such-user-here").is_err());
    }

    // regression: a live socket whose listen queue was full (its server wedged or
    // stopped) made the start hang in a blocking connect, without a word.
    #[test]
    fn a_live_socket_with_a_full_queue_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let other = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        other.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        other.listen(0).unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let c = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None).unwrap();
            if c.connect(&SockAddr::unix(&path).unwrap()).is_ok() {
                queued.push(c);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = ListenAddr::Unix(path.clone());
        std::thread::spawn(move || {
            let _ = tx.send(bind(&addr, &SocketOptions::default()).map(drop));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("bind hangs on a socket whose queue is full");
        match got {
            Err(ServerError::Bind(BindError::LiveSocket { .. })) => {}
            other => panic!("{other:?}"),
        }
        assert!(path.exists(), "the live socket was removed");
        drop(queued);
    }

    // regression: `unix:DIR/NAME/` passed the checks as NAME and bind said only "No such
    // file or directory"; a path over 107 bytes said "path must be shorter than SUN_LEN".
    #[test]
    fn a_socket_path_ending_with_a_slash_or_too_long_is_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let slash = ListenAddr::Unix(PathBuf::from(format!("{}/s.sock/", dir.path().display())));
        let e = bind(&slash, &SocketOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends with `/`"), "{e}");
        let long = dir.path().join("a".repeat(120));
        let e = bind(&ListenAddr::Unix(long.clone()), &SocketOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 107"), "{e}");
        assert!(!long.exists());
        // 107 bytes is still fine.
        let base = dir.path().as_os_str().len() + 1;
        let fits = dir.path().join("b".repeat(MAX_UNIX_PATH - base));
        assert_eq!(fits.as_os_str().len(), MAX_UNIX_PATH);
        let b = bind(&ListenAddr::Unix(fits.clone()), &SocketOptions::default()).unwrap();
        assert!(fits.exists());
        drop(b);
    }

    // regression: `[::ffff:127.0.0.1]:PORT` failed with "Invalid argument (os error 22)"
    // (an IPv4-mapped address on an IPv6-only socket); it is IPv4 loopback.
    #[test]
    fn an_ipv4_mapped_address_is_bound_as_its_ipv4_address() {
        let addr: ListenAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
        assert!(is_local_only(&addr));
        let b = bind(&addr, &SocketOptions::default()).unwrap();
        let ListenAddr::Tcp(sa) = b.addr else {
            panic!()
        };
        assert_eq!(sa.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        std::net::TcpStream::connect(sa).unwrap();
    }
}
