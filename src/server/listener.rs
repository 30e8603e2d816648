//! Binding listeners: TCP (IPv4/IPv6) and Unix sockets, with the mode and owner the
//! user configured, a stale Unix socket removed, and a live one refused.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use super::ServerError;
use crate::wsgi::ListenerInfo;

/// Where to listen: `HOST:PORT`, `[::1]:PORT`, `:PORT` (all interfaces) or `unix:PATH`.
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
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(a));
        }
        if !s.contains(':') {
            return Err(format!(
                "{s:?}: expected HOST:PORT, [IPv6]:PORT or unix:PATH"
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
}

/// A bound, listening socket, not yet registered with tokio.
#[derive(Debug)]
pub struct Bound {
    pub addr: ListenAddr,
    pub socket: BoundSocket,
    pub info: ListenerInfo,
    /// Passed in by systemd (LISTEN_FDS): never unlinked by postern.
    pub inherited: bool,
}

#[derive(Debug)]
pub enum BoundSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Bound {
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
        })
    }
}

/// Listening sockets passed by systemd socket activation (LISTEN_PID / LISTEN_FDS,
/// sd_listen_fds(3)); the variables are removed so children do not take them again.
pub fn systemd_listeners() -> Vec<Bound> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: fcntl on a plain integer fd only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            tracing::warn!(fd, "LISTEN_FDS names fd {fd}, but it is not open; ignored");
            continue;
        }
        // SAFETY: systemd hands us fds 3..3+LISTEN_FDS, open (checked) and ours now.
        let sock = unsafe { <socket2::Socket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = sock.set_nonblocking(true);
        let _ = sock.set_cloexec(true);
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        if let Some(sa) = local.as_socket() {
            out.push(Bound {
                addr: ListenAddr::Tcp(sa),
                socket: BoundSocket::Tcp(sock.into()),
                info: ListenerInfo {
                    protocol: Default::default(),
                    server_name: Arc::from(sa.ip().to_string().as_bytes()),
                    server_port: Arc::from(sa.port().to_string().as_bytes()),
                },
                inherited: true,
            });
        } else if let Some(path) = local.as_pathname() {
            out.push(Bound {
                addr: ListenAddr::Unix(path.to_owned()),
                socket: BoundSocket::Unix(sock.into()),
                info: ListenerInfo {
                    protocol: Default::default(),
                    server_name: Arc::from(&b"localhost"[..]),
                    server_port: Arc::from(&b"80"[..]),
                },
                inherited: true,
            });
        }
    }
    out
}

/// Binds and listens.
pub fn bind(addr: &ListenAddr, opts: &SocketOptions) -> Result<Bound, ServerError> {
    let err = |source: io::Error| ServerError::Bind {
        addr: addr.to_string(),
        source,
    };
    match addr {
        ListenAddr::Tcp(sa) => {
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM, None).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            if sa.is_ipv6() {
                socket.set_only_v6(true).map_err(err)?;
            }
            socket.bind(&SockAddr::from(*sa)).map_err(err)?;
            socket.listen(opts.backlog).map_err(err)?;
            // TCP_DEFER_ACCEPT (as uWSGI does by default): the kernel hands over a
            // connection once its first bytes are there, so the first read almost
            // always finds the whole request. A silent peer is passed on after
            // about a second anyway and meets --head-timeout.
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
            })
        }
        ListenAddr::Unix(path) => {
            clear_stale_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
            socket
                .bind(&SockAddr::unix(path).map_err(err)?)
                .map_err(err)?;
            let applied = (|| {
                if let Some(mode) = opts.mode {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                }
                if let Some((uid, gid)) = opts.owner {
                    std::os::unix::fs::chown(path, uid, gid)?;
                }
                socket.listen(opts.backlog)?;
                socket.set_nonblocking(true)
            })();
            if let Err(e) = applied {
                let _ = std::fs::remove_file(path);
                return Err(err(e));
            }
            Ok(Bound {
                addr: addr.clone(),
                socket: BoundSocket::Unix(socket.into()),
                info: ListenerInfo {
                    protocol: Default::default(),
                    server_name: Arc::from(&b"localhost"[..]),
                    server_port: Arc::from(&b"80"[..]),
                },
                inherited: false,
            })
        }
    }
}

/// Removes a Unix socket file nobody answers on; refuses a live one or a non-socket.
fn clear_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ServerError::Bind {
                addr: format!("unix:{}", path.display()),
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::LiveSocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale Unix socket left by an earlier run");
            std::fs::remove_file(path).map_err(|source| ServerError::Bind {
                addr: format!("unix:{}", path.display()),
                source,
            })
        }
        Err(source) => Err(ServerError::Bind {
            addr: format!("unix:{}", path.display()),
            source,
        }),
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
        let u = nix::unistd::User::from_name(user)
            .map_err(|e| format!("looking up user {user:?}: {e}"))?
            .ok_or_else(|| format!("no such user {user:?}"))?;
        Some(u.uid.as_raw())
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(match g.parse() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|e| format!("looking up group {g:?}: {e}"))?
                .ok_or_else(|| format!("no such group {g:?}"))?
                .gid
                .as_raw(),
        }),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("nonsense".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn parses_owners() {
        assert_eq!(parse_owner("0:0"), Ok((Some(0), Some(0))));
        assert_eq!(parse_owner("root"), Ok((Some(0), None)));
        assert_eq!(parse_owner(":0"), Ok((None, Some(0))));
        assert!(parse_owner("no-such-user-here").is_err());
    }
}
