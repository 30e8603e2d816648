//! A process the app forked that comes back into postern's request code.
//!
//! `os.fork()` in a request makes a child that is a copy of the worker with one thread,
//! the one that forked, holding the client's connection. A child that ends with
//! `os._exit()` or an `exec` is fine; one that returns from the app would go on as the
//! worker: send its own response into the connection its parent answers on (a second
//! response inside the client's body), then take connections from the shared listener
//! outside the master's knowledge (no --timeout, no reload: old code served on). So
//! every process marks itself at fork ([`install`]: `pthread_atfork`), a worker clears
//! the mark when it starts, and the request paths ([`guard`]: a relaxed load) end such
//! a child with one line in postern's log before it writes or accepts anything.
//!
//! A child that lives on (a `multiprocessing.Process` started in a request, a forked
//! helper that sleeps) would also hold copies of postern's sockets: the connections open
//! at the fork, whose responses end for uwsgi, SCGI and FastCGI without keep-conn when
//! the last descriptor of the connection closes (nginx waited for the child to exit),
//! and the listeners (after postern stopped, the port still took connections into a
//! queue nobody served, where nginx wants a refusal to try the next server). So the
//! fork hook of a serving process also closes, in the child, every socket whose local
//! address is one of its listeners' ([`serving`] records them): the listeners and every
//! connection accepted on them, and nothing of the app's (its own sockets have other
//! local addresses: a port a listener holds is never given to an outgoing connection).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static FORKED: AtomicBool = AtomicBool::new(false);

/// The local addresses of the listeners this process serves on ([`serving`]).
static LISTENERS: OnceLock<Vec<Local>> = OnceLock::new();

/// Descriptors of postern's own that a child closes too ([`serving`]).
static INTERNAL: OnceLock<Vec<RawFd>> = OnceLock::new();

/// The master forks one of its own (a worker, its stats helper), not the app.
static MASTER_FORKING: AtomicBool = AtomicBool::new(false);

/// The signals the master keeps blocked (it reads them from a signalfd;
/// [`master_blocks`]).
static MASTER_BLOCKS: OnceLock<libc::sigset_t> = OnceLock::new();

/// A socket's local address as `getsockname` gives it: the raw `sockaddr` bytes.
#[derive(Clone, Copy)]
struct Local {
    len: usize,
    bytes: [u8; std::mem::size_of::<libc::sockaddr_storage>()],
}

impl Local {
    /// `getsockname(fd)`; `None` for a descriptor that is not a socket. Async-signal-safe
    /// (one system call, the buffer on the stack): it runs in a fresh child.
    fn of(fd: RawFd) -> Option<Local> {
        let mut bytes = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
        let mut len = bytes.len() as libc::socklen_t;
        // SAFETY: `bytes` is a writable buffer of `len` bytes for the address.
        let r = unsafe { libc::getsockname(fd, bytes.as_mut_ptr().cast(), &mut len) };
        (r == 0).then(|| Local {
            len: (len as usize).min(bytes.len()),
            bytes,
        })
    }

    fn raw(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Whether a socket whose local address is `local` belongs to the listener bound at
/// `listener` (both raw `sockaddr` bytes from `getsockname`): the listener itself, or
/// a connection accepted on it. Unix sockets: the same path (an accepted connection's
/// local address is its listener's). TCP: the same family and port, and the same
/// address unless the listener's is the unspecified one (0.0.0.0, ::).
fn same_listener(listener: &[u8], local: &[u8]) -> bool {
    let family = |a: &[u8]| a.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
    let (Some(fam), Some(other)) = (family(listener), family(local)) else {
        return false;
    };
    if fam != other {
        return false;
    }
    // sockaddr_in: family, port (2), address (4); sockaddr_in6: family, port (2),
    // flow info (4), address (16), scope (4).
    fn inet(a: &[u8], at: usize, n: usize) -> Option<(&[u8], &[u8])> {
        Some((a.get(2..4)?, a.get(at..at + n)?))
    }
    let (l, c) = match i32::from(fam) {
        libc::AF_UNIX => return listener.len() > 2 && listener == local,
        libc::AF_INET => (inet(listener, 4, 4), inet(local, 4, 4)),
        libc::AF_INET6 => (inet(listener, 8, 16), inet(local, 8, 16)),
        _ => return false,
    };
    match (l, c) {
        (Some((lport, laddr)), Some((port, addr))) => {
            lport == port && (laddr == addr || laddr.iter().all(|b| *b == 0))
        }
        _ => false,
    }
}

/// In a child the app forked from a serving process: closes the copies of postern's
/// listeners and connections ([`same_listener`]). Only system calls, nothing that
/// allocates or locks (the child of a threaded process).
fn close_servers_sockets(listeners: &[Local]) {
    // A stream socket: UDP has its own ports (an app's statsd or DNS socket may have
    // the listener's port number; regression (review): it was closed).
    let ours = |fd: RawFd| {
        Local::of(fd).is_some_and(|l| listeners.iter().any(|s| same_listener(s.raw(), l.raw())))
            && is_stream(fd)
    };
    let close = |fd: RawFd| {
        // SAFETY: a descriptor of this child's table that only postern's code used;
        // the child runs none of that code (see `guard`).
        unsafe { libc::close(fd) };
    };
    use rustix::fs::{Mode, OFlags, RawDir};
    let Ok(dir) = rustix::fs::open(
        "/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        // No /proc (a bare chroot): the low descriptors, where a worker's are.
        for fd in 0..4096 {
            if ours(fd) {
                close(fd);
            }
        }
        return;
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = RawDir::new(&dir, &mut buf);
    // /proc lists the table by descriptor number, so closing as it goes skips nothing.
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name().to_bytes();
        let Some(fd) = parse_fd(name) else { continue };
        if fd != dir.as_raw_fd() && ours(fd) {
            close(fd);
        }
    }
}

/// Whether `fd` is a stream socket (`SO_TYPE`); async-signal-safe.
fn is_stream(fd: RawFd) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` is a writable c_int and `len` its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && kind == libc::SOCK_STREAM
}

fn parse_fd(name: &[u8]) -> Option<RawFd> {
    if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(name.iter().fold(0, |n, d| n * 10 + RawFd::from(d - b'0')))
}

extern "C" fn in_child() {
    FORKED.store(true, Ordering::Relaxed);
    if MASTER_FORKING.load(Ordering::Relaxed) {
        return;
    }
    // A child the app forked in the master (at an import under --preload): it does
    // not inherit the master's blocked signals, which only its signalfd reads.
    // regression: SIGTERM could not end such a child (a multiprocessing worker's
    // terminate() did nothing).
    if let Some(set) = MASTER_BLOCKS.get() {
        // SAFETY: async-signal-safe; a valid set; this thread's mask only.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
    }
    if let Some(listeners) = LISTENERS.get() {
        close_servers_sockets(listeners);
    }
    for fd in INTERNAL.get().map_or(&[][..], Vec::as_slice) {
        // SAFETY: postern's own descriptor (see `close_servers_sockets`).
        unsafe { libc::close(*fd) };
    }
}

/// This process is a child the app forked (from a worker, or from the master at an
/// import): an atomic load, async-signal-safe.
pub fn is_app_child() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// Registers the fork hook; once, before the process forks workers or serves.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the child handler only stores to an atomic (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// This process is the master, which blocks `signals`: a child the app forks in it
/// unblocks them.
pub fn master_blocks(signals: &[i32]) {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    };
    let _ = MASTER_BLOCKS.set(set);
}

/// Runs the master's own `fork` (a worker, its stats helper): its child is no app's.
pub fn master_fork<T>(fork: impl FnOnce() -> T) -> T {
    MASTER_FORKING.store(true, Ordering::Relaxed);
    let r = fork();
    MASTER_FORKING.store(false, Ordering::Relaxed);
    r
}

/// This process serves on `listeners` (a worker the master forked, right after its
/// fork, or the single process), before the app is imported: from now on a fork is the
/// app's, and its child gets no copy of the listeners, their connections or
/// `internal` (descriptors of postern's that live as long as the process).
pub fn serving(listeners: &[BorrowedFd<'_>], internal: &[BorrowedFd<'_>]) {
    FORKED.store(false, Ordering::Relaxed);
    let locals = listeners
        .iter()
        .filter_map(|l| Local::of(l.as_raw_fd()))
        .collect();
    let _ = LISTENERS.set(locals);
    let _ = INTERNAL.set(internal.iter().map(AsRawFd::as_raw_fd).collect());
}

/// Ends this process if it is a child the app forked, before it touches a connection.
#[inline]
pub fn guard() {
    if FORKED.load(Ordering::Relaxed) {
        end_forked_child();
    }
}

#[cold]
fn end_forked_child() -> ! {
    crate::logging::write_direct_error(
        "postern::forked",
        &format!(
            "a process the app forked (os.fork() in a request, pid {}) returned into postern instead of ending: it ends here, before it writes to the connection its parent answers on (it would have put a second response into that client's) or takes other connections; end such a child with os._exit() (or exec), or use subprocess or multiprocessing",
            std::process::id()
        ),
    );
    // SAFETY: ends the child at once, running nothing of the parent's (no atexit, no
    // destructors: their state belongs to the worker it was copied from).
    unsafe { libc::_exit(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn local(fd: impl AsFd) -> Vec<u8> {
        Local::of(fd.as_fd().as_raw_fd()).unwrap().raw().to_vec()
    }

    #[test]
    fn a_connection_accepted_on_a_tcp_listener_is_the_listener_s() {
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(("127.0.0.1", any.local_addr().unwrap().port()));
        let (accepted, _) = any.accept().unwrap();
        let client = c.unwrap();
        assert!(same_listener(&local(&any), &local(&accepted)));
        assert!(same_listener(&local(&any), &local(&any)));
        // Another listener's, and the client's own end (an ephemeral port), are not.
        assert!(!same_listener(&local(&lo), &local(&accepted)));
        assert!(!same_listener(&local(&any), &local(&client)));
        let c2 = std::net::TcpStream::connect(lo.local_addr().unwrap()).unwrap();
        let (a2, _) = lo.accept().unwrap();
        assert!(same_listener(&local(&lo), &local(&a2)));
        assert!(!same_listener(&local(&lo), &local(&c2)));
    }

    #[test]
    fn a_connection_accepted_on_a_unix_listener_is_the_listener_s() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock")).unwrap();
        let other = std::os::unix::net::UnixListener::bind(dir.path().join("b.sock")).unwrap();
        let client = std::os::unix::net::UnixStream::connect(dir.path().join("a.sock")).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(same_listener(&local(&l), &local(&accepted)));
        assert!(!same_listener(&local(&other), &local(&accepted)));
        // The client's end is unnamed.
        assert!(!same_listener(&local(&l), &local(&client)));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!same_listener(&local(&l), &local(&tcp)));
        assert!(!same_listener(&local(&tcp), &local(&l)));
    }

    #[test]
    fn truncated_or_foreign_addresses_are_never_the_listener_s() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l = local(&tcp);
        // Family, port and address: the first 8 of sockaddr_in's 16 bytes.
        for n in 0..8 {
            assert!(!same_listener(&l[..n], &l), "{n} bytes");
            assert!(!same_listener(&l, &l[..n]), "{n} bytes");
        }
        assert!(Local::of(-1).is_none());
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(Local::of(file.as_raw_fd()).is_none(), "not a socket");
    }

    #[test]
    fn only_stream_sockets_are_the_listener_s() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // UDP has its own ports: the same number is another socket's.
        let udp = std::net::UdpSocket::bind(tcp.local_addr().unwrap()).unwrap();
        assert!(same_listener(&local(&tcp), &local(&udp)), "same address");
        assert!(is_stream(tcp.as_raw_fd()));
        assert!(!is_stream(udp.as_raw_fd()));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!is_stream(file.as_raw_fd()));
    }

    #[test]
    fn descriptor_names_parse_as_numbers_only() {
        assert_eq!(parse_fd(b"0"), Some(0));
        assert_eq!(parse_fd(b"1023"), Some(1023));
        for bad in [&b""[..], b".", b"..", b"1a", b"-1", b"9999999999"] {
            assert_eq!(parse_fd(bad), None);
        }
    }
}
