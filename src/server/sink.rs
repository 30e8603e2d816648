//! The connection as the Python thread writes to it: blocking-style writes on a
//! non-blocking socket (what the buffer cannot take of a direct write is sent with the
//! socket made blocking for it, SO_SNDTIMEO as the timeout; the thread's writer and
//! sendfile wait for room with poll(2)), sendfile(2) for file wrappers, and the close
//! or abort at the end. A streamed response's chunks, from its third write on, go
//! through the thread's writer ([`super::writer`]) so that those produced during a
//! send leave together. (The access line is written by the Python side from what
//! `finish` returns: [`crate::logging::access`].)

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    let mut armed = None;
    while sent < data.len() {
        let waited = match rustix::net::send(sock.as_fd(), &data[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => {
                sent += n;
                // A short send: the socket buffer is full. Wait for room instead of
                // sending again only to get EAGAIN (one system call fewer per wait).
                if sent == data.len() {
                    break;
                }
                wait_writable_until(sock, timeout, stop, &mut armed)
            }
            Err(Errno::AGAIN) => wait_writable_until(sock, timeout, stop, &mut armed),
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
/// second to look at the flag before). The eventfd exists only while a send that had
/// to wait is under way ([`Armed`]): a connection costs no descriptor for it between
/// such sends (review 422: kept for the connection's life, every FastCGI connection
/// that once waited for room held one more, past what `--max-connections` counts).
#[derive(Default)]
pub struct Stop {
    raised: AtomicBool,
    /// The eventfd, while sends wait ([`Armed`] holds a reference each).
    wake: Mutex<Option<Arc<OwnedFd>>>,
}

/// A send's hold on its [`Stop`]'s eventfd, from its first wait for room to its end.
struct Armed<'a> {
    stop: &'a Stop,
    fd: Option<Arc<OwnedFd>>,
}

impl Stop {
    /// Raises it for good, waking any wait.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        // Under the lock `arm` takes: either the wait sees the flag, or this sees its
        // eventfd.
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = &*wake {
            let _ = rustix::io::write(&**fd, &1u64.to_ne_bytes());
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The eventfd a send's waits poll, made now if need be (`None` in the hold if it
    /// cannot be: the waits then look at the flag every [`STOP_CHECK`]).
    fn arm(&self) -> Armed<'_> {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if wake.is_none() {
            use rustix::event::{eventfd, EventfdFlags};
            *wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .ok()
                .map(Arc::new);
        }
        Armed {
            stop: self,
            fd: wake.clone(),
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else {
            return;
        };
        // References are taken and let go under the lock: the count is exact there.
        let mut wake = self.stop.wake.lock().unwrap_or_else(|e| e.into_inner());
        drop(fd);
        if wake.as_ref().is_some_and(|w| Arc::strong_count(w) == 1) {
            *wake = None;
        }
    }
}

/// Writes all of `bufs` in order with vectored sends (no copy into one buffer),
/// waiting like [`send_all_until`]. `bufs` is consumed as it is sent.
pub fn send_all_vectored(
    sock: &socket2::Socket,
    mut bufs: &mut [io::IoSlice<'_>],
    timeout: Duration,
    stop: Option<&Stop>,
) -> (usize, io::Result<()>) {
    let mut sent = 0;
    let mut armed = None;
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
                        wait_writable_until(sock, timeout, stop, &mut armed)
                    }
                }
                Err(Errno::AGAIN) => wait_writable_until(sock, timeout, stop, &mut armed),
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
    wait_writable_until(sock, t, None, &mut None)
}

/// [`wait_writable`], ended early by `stop` (polled as its eventfd, else in waits of
/// [`STOP_CHECK`] that look at it in between). `armed`: the send's hold on that
/// eventfd, taken at its first wait, let go when the send ends.
fn wait_writable_until<'s>(
    sock: &socket2::Socket,
    t: Duration,
    stop: Option<&'s Stop>,
    armed: &mut Option<Armed<'s>>,
) -> io::Result<()> {
    let Some(stop) = stop else {
        return match poll_writable(sock, t, None)? {
            true => Ok(()),
            false => Err(read_nothing(t)),
        };
    };
    let wake = armed
        .get_or_insert_with(|| stop.arm())
        .fd
        .as_deref()
        .map(|f| f.as_fd());
    let deadline = Instant::now() + t;
    let mut raised = stop.is_raised();
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

/// SO_SNDTIMEO for [`ConnSink::send_blocking`] under a write timeout of `t`: a
/// sixteenth of it (a stall is then cut at most about that much later than a poll for
/// room alone would cut it, after the front server's last read; a quarter cut a
/// front server stalled behind nginx at 1.25 to 1.5 timeouts, probe 372). At least a
/// microsecond: SO_SNDTIMEO counts whole microseconds, and 0 means never.
fn timeout_slice(t: Duration) -> Duration {
    (t / 16).max(Duration::from_micros(1))
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
    /// then, so the next blocking write sends blocking at once (instead of a
    /// non-blocking send that would only get EAGAIN).
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
    /// SO_SNDTIMEO is set for [`Self::send_blocking`] (once per connection).
    timeout_set: bool,
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
            timeout_set: false,
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

    /// `write_all` without arming: a chunk of a stream goes to the thread's writer
    /// (a large one after the writer is drained); a direct write is sent at once,
    /// and what the socket buffer cannot take is sent blocking ([`Self::send_blocking`]).
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

    /// The rest of a direct write that found the socket buffer full, sent with the
    /// socket made blocking for one `send` (SO_SNDTIMEO a sixteenth of the write timeout,
    /// [`timeout_slice`]): the kernel sends it all as the front server reads, in one
    /// system call, where a non-blocking send needs a poll and a send per refill of the
    /// buffer (a 1 MiB body behind nginx: 3 to 4 of each). A front server that reads
    /// too slowly for that (the send times out, or a signal ends it) gets the rest as
    /// before, a send and a poll for room at a time ([`Self::send_polled`]), so a stall
    /// is cut as a poll's timeout says, a sixteenth of the timeout later at most. (Not a
    /// loop of blocking sends: SO_SNDTIMEO counts per send call over TCP and per wait
    /// for room over a Unix socket, and a wait that times out may still find room the
    /// front server freed without waking it, so such a loop cut a stalled front server
    /// at two or three times the timeout.) The socket is non-blocking again before
    /// this returns: `send_polled`, `send_file`'s sendfile (which has no DONTWAIT
    /// flag), the thread's writer and a lingering close (tokio) need it. Nothing else
    /// uses the socket meanwhile: the body was read before the sink existed, and the
    /// writer is drained first.
    fn send_blocking(&mut self, data: &[u8]) -> io::Result<()> {
        // An event loop's sends never get here: it waits for room on its own.
        debug_assert!(!self.on_loop);
        let Some(sock) = self.sock.clone() else {
            return self.send_polled(data);
        };
        if !self.timeout_set {
            if sock
                .set_write_timeout(Some(timeout_slice(self.write_timeout)))
                .is_err()
            {
                return self.send_polled(data);
            }
            self.timeout_set = true;
        }
        if rustix::io::ioctl_fionbio(&*sock, false).is_err() {
            return self.send_polled(data);
        }
        let r = rustix::net::send(sock.as_fd(), data, SendFlags::NOSIGNAL);
        if let Err(e) = rustix::io::ioctl_fionbio(&*sock, true) {
            // The sink's own later sends still work on a blocking socket (SO_SNDTIMEO
            // bounds them); a lingering close must not hand it to tokio.
            tracing::error!(
                "internal error: the connection could not be made non-blocking again ({e}): it is closed at the response's end, without a lingering close"
            );
            self.linger = None;
        }
        match r {
            Ok(n) => {
                self.written += n as u64;
                if n == data.len() {
                    return Ok(());
                }
                self.send_polled(&data[n..])
            }
            // Timed out with nothing sent, or a signal: the rest as before.
            Err(Errno::AGAIN | Errno::INTR) => self.send_polled(data),
            Err(e) => Err(e.into()),
        }
    }

    /// A write as a non-blocking socket takes it: a send, and a poll for room whenever
    /// the buffer is full.
    fn send_polled(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match rustix::net::send(self.sock()?.as_fd(), data, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    data = &data[n..];
                    self.written += n as u64;
                    if !data.is_empty() {
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
            // sends as the buffer empties, so a send here would only get EAGAIN. (An event
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
            closed_by: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    fn nonblocking(s: &ConnSink) -> bool {
        let fd = s.sock.as_ref().unwrap();
        rustix::fs::fcntl_getfl(&**fd)
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK)
    }

    /// A Unix connection: the sink's end (non-blocking, as accepted, with a small
    /// send buffer so that a write fills it) and the front server's.
    fn unix_pair(timeout: Duration) -> (ConnSink, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = socket2::Socket::from(OwnedFd::from(a));
        sock.set_nonblocking(true).unwrap();
        sock.set_send_buffer_size(8192).unwrap();
        (ConnSink::new(sock, false, Instant::now(), timeout), b)
    }

    /// The same over TCP on loopback, both buffers small (`SO_RCVBUF` set before
    /// the connection, so the window stays small).
    fn tcp_pair(timeout: Duration) -> (ConnSink, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_recv_buffer_size(8192).unwrap();
        c.connect(&l.local_addr().unwrap().into()).unwrap();
        let (a, _) = l.accept().unwrap();
        let sock = socket2::Socket::from(OwnedFd::from(a));
        sock.set_nonblocking(true).unwrap();
        sock.set_send_buffer_size(8192).unwrap();
        (
            ConnSink::new(sock, true, Instant::now(), timeout),
            std::net::TcpStream::from(OwnedFd::from(c)),
        )
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Reads everything, `chunk` bytes every `pause`.
    fn slow_reader(
        mut r: impl Read + Send + 'static,
        chunk: usize,
        pause: Duration,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; chunk];
            loop {
                std::thread::sleep(pause);
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
    }

    #[test]
    fn a_write_larger_than_the_buffer_arrives_whole_and_leaves_the_socket_non_blocking() {
        let (mut sink, peer) = unix_pair(Duration::from_secs(5));
        let (mut tsink, tpeer) = tcp_pair(Duration::from_secs(5));
        let data = body(1 << 20);
        let readers = [
            slow_reader(peer, 16384, Duration::from_micros(200)),
            slow_reader(tpeer, 16384, Duration::from_micros(200)),
        ];
        for s in [&mut sink, &mut tsink] {
            s.write_all(&data).unwrap();
            assert!(nonblocking(s));
            // Sent blocking once: the timeout is set.
            assert!(s.timeout_set);
            let sent = s.finish(End::Complete(200));
            assert_eq!(sent.bytes, data.len() as u64);
        }
        for r in readers {
            assert!(r.join().unwrap() == data, "the body arrived changed");
        }
    }

    #[test]
    fn a_front_server_that_stops_reading_is_cut_about_the_timeout_after_its_last_read() {
        let t = Duration::from_secs(1);
        let (sink, peer) = unix_pair(t);
        let (tsink, tpeer) = tcp_pair(t);
        let cases: [(ConnSink, Box<dyn Read + Send>); 2] =
            [(sink, Box::new(peer)), (tsink, Box::new(tpeer))];
        for (mut s, mut peer) in cases {
            let data = body(4 << 20);
            // Reads for 300 ms, then stops (and keeps the connection open).
            let reader = std::thread::spawn(move || {
                let begin = Instant::now();
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                let mut last = Instant::now();
                while begin.elapsed() < Duration::from_millis(300) {
                    if let Ok(n) = peer.read(&mut buf) {
                        got += n;
                        last = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (peer, got, last)
            });
            // The response's last write: not armed, so the close is a FIN over TCP
            // too, and what the buffers hold can still be read after it.
            let e = s.write_last(&data).unwrap_err();
            let cut = Instant::now();
            let (mut peer, got, last) = reader.join().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("read nothing for 1s"), "{e}");
            assert!(got > 0);
            // The timeout counts from the last read that woke the send (the reads
            // after it, too small to wake it, by a few ms here), and the blocking
            // send's own timeout adds a sixteenth of it. regression (probe 370):
            // a loop of blocking sends cut a stalled reader at 2 to 3 timeouts.
            let quiet = cut - last;
            assert!(
                quiet + Duration::from_millis(100) >= t
                    && quiet <= t + t / 16 + Duration::from_millis(400),
                "cut {quiet:?} after the last read"
            );
            assert!(nonblocking(&s));
            let sent = s.finish(End::Stalled(200));
            // What it counts is what left: the front server reads exactly that.
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            assert_eq!(sent.bytes, (got + rest.len()) as u64);
        }
    }

    #[test]
    fn a_front_server_that_closes_during_the_send_ends_it_with_the_socket_non_blocking() {
        let (mut s, peer) = unix_pair(Duration::from_secs(5));
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(peer);
        });
        let e = s.write_all(&body(1 << 20)).unwrap_err();
        closer.join().unwrap();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
        assert!(nonblocking(&s));
        s.finish(End::ClientGone(200));
    }

    #[test]
    fn the_timeout_slice_is_a_sixteenth_and_never_zero() {
        assert_eq!(
            timeout_slice(Duration::from_secs(64)),
            Duration::from_secs(4)
        );
        assert_eq!(
            timeout_slice(Duration::from_nanos(1)),
            Duration::from_micros(1)
        );
    }
}
