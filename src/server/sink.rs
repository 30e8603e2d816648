//! The connection as the Python thread writes to it: blocking-style writes on a
//! non-blocking socket (poll(2) with a timeout when the front server is not reading),
//! sendfile(2) for file wrappers, and the close or abort at the end. A streamed
//! response's chunks, from its third write on, go through the thread's writer
//! ([`super::writer`]) so that those produced during a send leave together. (The access line
//! is written by the Python side from what `finish` returns: [`crate::logging::access`].)

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SendFlags;

use super::writer::{Failed, Stream};
use crate::proto::response::HeadStyle;
use crate::wsgi::{End, Sent, Sink};

/// Writes all of `data` to a non-blocking socket, waiting (poll) while the front
/// server is not reading, up to `timeout` per wait.
pub fn send_all(sock: &socket2::Socket, data: &[u8], timeout: Duration) -> io::Result<()> {
    send_all_until(sock, data, timeout, None).1
}

/// [`send_all`], saying how many bytes of `data` left (all of them when `Ok`). With
/// `stop`, a wait for room ends as soon as it is raised, with an
/// [`io::ErrorKind::Interrupted`] error (a system call's EINTR is retried, never
/// reported): the caller then owns what is left of `data`.
pub fn send_all_until(
    sock: &socket2::Socket,
    data: &[u8],
    timeout: Duration,
    stop: Option<&Stop>,
) -> (usize, io::Result<()>) {
    let mut sent = 0;
    while sent < data.len() {
        let waited = match rustix::net::send(sock.as_fd(), &data[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => {
                sent += n;
                // A short send: the socket buffer is full. Wait for room instead of
                // sending again only to get EAGAIN (one system call fewer per wait).
                if sent == data.len() {
                    break;
                }
                wait_writable_until(sock, timeout, stop)
            }
            Err(Errno::AGAIN) => wait_writable_until(sock, timeout, stop),
            Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = waited {
            return (sent, Err(e));
        }
    }
    (sent, Ok(()))
}

/// How often a wait for room looks at its [`Stop`] when no eventfd could be made for
/// it ([`send_all_until`]).
pub const STOP_CHECK: Duration = Duration::from_millis(50);

/// What stops a send waiting for room ([`send_all_until`]) once raised: a flag, and an
/// eventfd that raising it signals, polled together with the socket, so a stalled
/// send sleeps until the socket has room, the stop, or its timeout (it woke 20 times a
/// second to look at the flag before). The eventfd is made by the first wait that
/// needs it: a connection that never waits for room costs no descriptor.
#[derive(Default)]
pub struct Stop {
    raised: AtomicBool,
    wake: OnceLock<Option<OwnedFd>>,
}

impl Stop {
    /// Raises it for good, waking any wait.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        // Pairs with the fence in `wake_fd`: either the wait sees the flag, or this
        // sees its eventfd.
        fence(Ordering::SeqCst);
        if let Some(Some(fd)) = self.wake.get() {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The eventfd a wait polls (made now if need be; `None` if it cannot be), and
    /// whether it is raised already.
    fn wake_fd(&self) -> (Option<BorrowedFd<'_>>, bool) {
        let fd = self
            .wake
            .get_or_init(|| {
                use rustix::event::{eventfd, EventfdFlags};
                eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()
            })
            .as_ref()
            .map(|f| f.as_fd());
        fence(Ordering::SeqCst);
        (fd, self.raised.load(Ordering::SeqCst))
    }
}

/// Writes all of `bufs` in order with vectored sends (no copy into one buffer),
/// waiting like [`send_all`]. `bufs` is consumed as it is sent.
pub fn send_all_vectored(
    sock: &socket2::Socket,
    mut bufs: &mut [io::IoSlice<'_>],
    timeout: Duration,
) -> (usize, io::Result<()>) {
    let mut sent = 0;
    while !bufs.is_empty() {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        let waited =
            match rustix::net::sendmsg(sock.as_fd(), bufs, &mut control, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    sent += n;
                    io::IoSlice::advance_slices(&mut bufs, n);
                    // Short: the buffer is full (as in send_all).
                    if bufs.is_empty() {
                        Ok(())
                    } else {
                        wait_writable(sock, timeout)
                    }
                }
                Err(Errno::AGAIN) => wait_writable(sock, timeout),
                Err(Errno::INTR) => Ok(()),
                Err(e) => Err(e.into()),
            };
        if let Err(e) = waited {
            return (sent, Err(e));
        }
    }
    (sent, Ok(()))
}

/// Waits until the socket can take more bytes, or `t` passes.
fn wait_writable(sock: &socket2::Socket, t: Duration) -> io::Result<()> {
    wait_writable_until(sock, t, None)
}

/// [`wait_writable`], ended early by `stop` (polled as its eventfd, else in waits of
/// [`STOP_CHECK`] that look at it in between).
fn wait_writable_until(sock: &socket2::Socket, t: Duration, stop: Option<&Stop>) -> io::Result<()> {
    let Some(stop) = stop else {
        return match poll_writable(sock, t, None)? {
            true => Ok(()),
            false => Err(read_nothing(t)),
        };
    };
    let (wake, raised) = stop.wake_fd();
    let deadline = Instant::now() + t;
    let mut raised = raised;
    loop {
        if raised {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the send was stopped while the front server was not reading",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(read_nothing(t));
        }
        let wait = if wake.is_some() {
            left
        } else {
            left.min(STOP_CHECK)
        };
        if poll_writable(sock, wait, wake)? {
            return Ok(());
        }
        raised = stop.is_raised();
    }
}

fn read_nothing(t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the front server read nothing for {t:?} (--read-timeout)"),
    )
}

/// True once the socket can take more bytes; false when `t` passed first, or `wake`
/// (an eventfd) was signalled.
fn poll_writable(
    sock: &socket2::Socket,
    t: Duration,
    wake: Option<BorrowedFd<'_>>,
) -> io::Result<bool> {
    let ts = Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    };
    let mut fds = [
        PollFd::new(sock, PollFlags::OUT),
        PollFd::new(sock, PollFlags::IN),
    ];
    let n = match wake {
        Some(w) => {
            fds[1] = PollFd::from_borrowed_fd(w, PollFlags::IN);
            2
        }
        None => 1,
    };
    loop {
        match rustix::event::poll(&mut fds[..n], Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(!fds[0].revents().is_empty()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// From this write of a response on (the head and first chunk being the first), its
/// chunks go through the thread's writer ([`super::writer`]): a response of one or two
/// writes (the usual one) keeps the direct send with no copy and no other thread.
const STREAM_FROM: u32 = 3;

/// A chunk this large is sent directly (after what is queued), not copied: the copy
/// would cost more than the send it saves.
const DIRECT: usize = 64 * 1024;

fn bufs_len(bufs: &[io::IoSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// How a connection closes after its complete response when it must not close at once
/// (the slow lane's lingering close, `connection::Linger`). A trait so that this module
/// does not import the one that makes sinks.
pub trait Close: Send + Sync {
    /// Closes `sock`; `permit` (its place in `--max-connections`) is held until then.
    fn close(self: Box<Self>, sock: Arc<socket2::Socket>, permit: Option<super::admission::Permit>);
}

/// A front-server connection owned by a Python thread for the response.
pub struct ConnSink {
    /// Shared with this thread's writer while a stream goes through it.
    sock: Option<Arc<socket2::Socket>>,
    /// Writes so far (`try_write` calls), to tell a stream from a one-shot response.
    writes: u32,
    /// The response's chunks go through the thread's writer from here on.
    stream: Option<Stream>,
    /// An event loop writes the response ([`Sink::loop_writes`]): never a writer.
    on_loop: bool,
    /// The last non-blocking send was short or refused: the socket buffer was full
    /// then, so the next blocking write waits for room before it sends (instead of a
    /// send that would only get EAGAIN).
    full: bool,
    tcp: bool,
    written: u64,
    started: Instant,
    write_timeout: Duration,
    style: HeadStyle,
    /// Counts the connection (`--max-connections`) until the sink is done with it.
    permit: Option<super::admission::Permit>,
    /// The peer sent bytes past its request's body: a complete response ends with a
    /// lingering close ([`Close`]), not a plain one.
    linger: Option<Box<dyn Close>>,
    /// SO_LINGER 0 is set on the TCP connection while the response is under way
    /// ([`ConnSink::arm`]).
    armed: bool,
    /// [`Sink::maybe_whole`]: writes do not arm.
    spare: bool,
}

impl ConnSink {
    // The builder's steps are inlined into the fast path that chains them (each a
    // call of its own cost ~40 instructions a request when they were not).
    #[inline]
    pub fn new(
        sock: socket2::Socket,
        tcp: bool,
        started: Instant,
        write_timeout: Duration,
    ) -> Self {
        ConnSink {
            sock: Some(Arc::new(sock)),
            writes: 0,
            stream: None,
            on_loop: false,
            full: false,
            tcp,
            written: 0,
            started,
            write_timeout,
            style: HeadStyle::Http,
            permit: None,
            linger: None,
            armed: false,
            spare: false,
        }
    }

    /// A response that does not end with this write, over TCP: SO_LINGER 0 until it
    /// ends complete ([`Sink::finish`]), so that any close that cuts it (the worker's
    /// exit at --graceful-timeout or a second signal, a --timeout SIGKILL, a crash) is
    /// a reset, which nginx reports as an upstream error, not a FIN it takes for the
    /// end of a body without Content-Length. regression: deploy HIGH (uwsgi and SCGI
    /// over TCP): a stream cut by --graceful-timeout at a reload reached curl as a
    /// complete 200 (exit 0). One-shot responses (a last write) never pay for it.
    #[inline]
    fn arm(&mut self) {
        if self.tcp && !self.armed && !self.spare {
            if let Some(s) = &self.sock {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
            self.armed = true;
        }
    }

    /// The connection's place in `--max-connections`, given back with the sink.
    #[inline]
    pub fn permit(mut self, permit: super::admission::Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// A complete response closes the connection with `linger`, when there is one
    /// (bytes past the request's body were read, or are on their way).
    #[inline]
    pub fn linger(mut self, linger: Option<Box<dyn Close>>) -> Self {
        self.linger = linger;
        self
    }

    /// How the response head is written (the listener's protocol decides).
    #[inline]
    pub fn style(mut self, style: HeadStyle) -> Self {
        self.style = style;
        self
    }

    fn sock(&self) -> io::Result<&socket2::Socket> {
        self.sock
            .as_deref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the connection is closed"))
    }

    fn wait_writable(&self) -> io::Result<()> {
        wait_writable(self.sock()?, self.write_timeout)
    }

    /// Waits until the writer has sent everything queued (the GIL released); its
    /// error if a send failed. Direct writes may follow.
    /// `write_all` without arming: what it sends.
    fn write_rest(&mut self, mut data: &[u8]) -> io::Result<()> {
        if let Some(s) = &self.stream {
            if data.len() < DIRECT {
                // Waits only while the queue is full (backpressure).
                return s.push(data);
            }
            self.drain()?;
        }
        if std::mem::take(&mut self.full) && !data.is_empty() {
            return self.send_blocking(data);
        }
        while !data.is_empty() {
            let r = rustix::net::send(self.sock()?.as_fd(), data, SendFlags::NOSIGNAL);
            match r {
                Ok(n) => {
                    data = &data[n..];
                    self.written += n as u64;
                    // Short: the buffer is full.
                    if !data.is_empty() {
                        return self.send_blocking(data);
                    }
                }
                Err(Errno::AGAIN) => return self.send_blocking(data),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The rest of a write that found the socket buffer full, sent with the socket
    /// made blocking for it, SO_SNDTIMEO set to the write timeout: the kernel sends it
    /// all as the front server reads, in one system call, where a non-blocking send
    /// needs a poll and a send per refill of the buffer (a 1 MiB body: 3 to 4 of each
    /// behind nginx). The socket is non-blocking again before this returns (a later
    /// `try_write` or `try_send_file`, the thread's writer and a lingering close
    /// expect it). A send that ends with nothing sent in the timeout is the
    /// `--read-timeout` error of a poll that timed out (over TCP the kernel counts the
    /// timeout per call, so a front server that reads slowly but steadily is never cut).
    fn send_blocking(&mut self, mut data: &[u8]) -> io::Result<()> {
        let t = self.write_timeout;
        let sock = self.sock()?;
        // SO_SNDTIMEO of 0 means no timeout: a timeout under a microsecond is one.
        sock.set_write_timeout(Some(t.max(Duration::from_micros(1))))?;
        rustix::io::ioctl_fionbio(sock, false)?;
        let mut sent = 0u64;
        let r = loop {
            match rustix::net::send(sock.as_fd(), data, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    data = &data[n..];
                    sent += n as u64;
                    if data.is_empty() {
                        break Ok(());
                    }
                }
                Err(Errno::AGAIN) => break Err(read_nothing(t)),
                Err(Errno::INTR) => {}
                Err(e) => break Err(e.into()),
            }
        };
        let back = rustix::io::ioctl_fionbio(sock, true);
        self.written += sent;
        r?;
        back.map_err(Into::into)
    }

    fn drain(&mut self) -> io::Result<()> {
        match &self.stream {
            Some(s) => {
                let (sent, r) = s.drain();
                self.written += sent;
                r
            }
            None => Ok(()),
        }
    }
}

impl Sink for ConnSink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.arm();
        self.write_rest(data)
    }

    fn maybe_whole(&mut self, on: bool) {
        self.spare = on;
    }

    /// An ASGI response written by the loop ([`Sink::loop_writes`]) with more to come.
    #[inline]
    fn under_way(&mut self) {
        self.arm();
    }

    /// The response's last bytes: the close that follows is its end (not armed).
    fn write_last(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_rest(data)
    }

    /// One non-blocking send (the socket is non-blocking, and DONTWAIT says so again):
    /// what the kernel takes now. Safe with the GIL held: it never waits.
    /// From the `STREAM_FROM`th write on, a chunk is queued for the thread's writer
    /// instead (a copy, no system call): it is sent together with whatever else the app
    /// yields while the writer's previous send is in flight.
    fn try_write(&mut self, data: &[u8], last: bool) -> io::Result<usize> {
        self.writes += 1;
        if !last {
            self.arm();
        }
        if self.stream.is_none()
            && !self.on_loop
            && self.writes >= STREAM_FROM
            && data.len() < DIRECT
        {
            if let Some(sock) = &self.sock {
                let (sock, timeout) = (sock.clone(), self.write_timeout);
                self.stream = Stream::start(Arc::new(move |b: &[u8]| {
                    // Sent as it is: every byte that left counts.
                    let (sent, r) = send_all_until(&sock, b, timeout, None);
                    r.map_err(|error| Failed {
                        counted: sent as u64,
                        error,
                    })
                }));
            }
        }
        if let Some(s) = &self.stream {
            if data.len() >= DIRECT {
                return Ok(0); // write_all: drains the queue, then sends directly
            }
            return Ok(if s.try_push(data)? { data.len() } else { 0 });
        }
        if self.full && !self.on_loop {
            // The previous send found the buffer full (a response's first write, its
            // head and body in one sendmsg, was short): the blocking write that follows
            // waits for room first, so a send here would only get EAGAIN. (An event
            // loop is told of room by its own wait: it always sends.)
            return Ok(0);
        }
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        match rustix::net::send(self.sock()?.as_fd(), data, flags) {
            Ok(n) => {
                self.written += n as u64;
                self.full = n < data.len();
                Ok(n)
            }
            Err(Errno::AGAIN) => {
                self.full = true;
                Ok(0)
            }
            Err(Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// One non-blocking `sendmsg` of the two (a response's first write: no stream
    /// yet). `last` changes nothing here: the end of a response is the close.
    fn try_write_pair(&mut self, head: &[u8], data: &[u8]) -> io::Result<usize> {
        let bufs = [io::IoSlice::new(head), io::IoSlice::new(data)];
        let mut control = rustix::net::SendAncillaryBuffer::default();
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        match rustix::net::sendmsg(self.sock()?.as_fd(), &bufs, &mut control, flags) {
            Ok(n) => {
                self.written += n as u64;
                // Counted as the two writes it stands for, each once it is whole
                // (the caller writes what is left): a stream starts where it did.
                self.writes += u32::from(n >= head.len()) + u32::from(n == bufs_len(&bufs));
                self.full = n < bufs_len(&bufs);
                Ok(n)
            }
            Err(Errno::AGAIN) => {
                self.full = true;
                Ok(0)
            }
            Err(Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// `finish` is a close(2) (after setting SO_LINGER 0 for an abort): it never
    /// waits, whatever is still in the socket buffer (the kernel sends it, or resets);
    /// unless the writer still holds part of a stream.
    fn finish_is_quick(&self) -> bool {
        self.stream.is_none()
    }

    fn has_pending(&self) -> bool {
        self.stream.is_some()
    }

    /// The end of a stream: everything queued is sent before the response's ending is
    /// decided, so a client gone during the last chunks is reported as such.
    fn flush(&mut self) -> io::Result<()> {
        let r = self.drain();
        self.stream = None;
        r
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
        self.drain()?;
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let chunk = usize::try_from(end - off)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::sendfile(self.sock()?.as_fd(), file, Some(&mut off), chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ))
                }
                Ok(n) => {
                    self.written += n as u64;
                    // Short: the buffer is full; wait for room (see send_all).
                    if n < chunk {
                        self.wait_writable()?;
                    }
                }
                Err(Errno::AGAIN) => self.wait_writable()?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: End) -> Sent {
        if !matches!(end, End::Incomplete(_)) {
            // An abort resets the connection: what is still queued would be lost anyway.
            let _ = self.drain();
        }
        // Dropping the stream lets the writer go of the connection.
        self.stream = None;
        if let (End::Complete(_), true, Some(s)) = (end, self.armed, &self.sock) {
            // Sent whole (drained above): the close is a FIN again, after the rest.
            let _ = s.set_linger(None);
        }
        if let (End::Incomplete(_), true, Some(s)) = (end, self.tcp, &self.sock) {
            // SO_LINGER 0: close() sends a reset, which nginx reports as an upstream
            // error instead of taking the body as complete.
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        if let (End::Complete(_), Some(l)) = (end, self.linger.take()) {
            if let Some(s) = self.sock.take() {
                l.close(s, self.permit.take());
            }
        }
        // Dropping the socket closes it (FIN, or RST after SO_LINGER 0).
        self.sock = None;
        Sent {
            bytes: self.written,
            started: self.started,
            late: false,
            cut: false,
        }
    }

    fn head_style(&self) -> HeadStyle {
        self.style
    }

    fn peer_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.sock.as_ref().map(|s| s.as_raw_fd())
    }

    fn gone_before_start(&self) -> bool {
        self.sock.as_ref().is_some_and(hung_up)
    }

    fn write_fd(&self) -> Option<std::os::fd::RawFd> {
        self.peer_fd()
    }

    /// The connection is this response's alone: the loop waits on it for room.
    fn loop_writes(&mut self) -> Option<(std::os::fd::RawFd, Duration)> {
        self.on_loop = true;
        self.peer_fd().map(|fd| (fd, self.write_timeout))
    }

    fn try_write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        match rustix::net::sendmsg(self.sock()?.as_fd(), bufs, &mut control, flags) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn try_send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> io::Result<usize> {
        let mut off = offset;
        let chunk = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::sendfile(self.sock()?.as_fd(), file, Some(&mut off), chunk) {
            Ok(0) if len > 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            )),
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ConnSink {
    fn drop(&mut self) {
        if self.sock.is_some() {
            // Never finished (internal error): abort rather than look complete.
            if self.tcp {
                if let Some(s) = &self.sock {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
            tracing::error!(
                "internal error: a response was dropped unfinished; connection aborted"
            );
        }
    }
}

/// Whether the peer of `sock` has reset the connection or closed it both ways (a Unix
/// socket's peer closed; a TCP reset): `POLLHUP` or `POLLERR`, looked at without
/// waiting or reading. A half-close (the peer's `shutdown(SHUT_WR)`, or a TCP peer's
/// close, which reads the same here) is not: its request is still answered.
pub(crate) fn hung_up(sock: &impl std::os::fd::AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR)
}
