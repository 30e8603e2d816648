//! The connection as the Python thread writes to it: blocking-style writes on a
//! non-blocking socket (poll(2) with a timeout when the front server is not reading),
//! sendfile(2) for file wrappers, and the close or abort at the end. (The access line
//! is written by the Python side from what `finish` returns: [`crate::logging::access`].)

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SendFlags;

use crate::proto::response::HeadStyle;
use crate::wsgi::{End, Sent, Sink};

/// Writes all of `data` to a non-blocking socket, waiting (poll) while the front
/// server is not reading, up to `timeout` per wait.
pub fn send_all(sock: &socket2::Socket, mut data: &[u8], timeout: Duration) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(sock.as_fd(), data, SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) => wait_writable(sock, timeout)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `bufs` in order with vectored sends (no copy into one buffer),
/// waiting like [`send_all`]. `bufs` is consumed as it is sent.
pub fn send_all_vectored(
    sock: &socket2::Socket,
    mut bufs: &mut [io::IoSlice<'_>],
    timeout: Duration,
) -> io::Result<()> {
    while !bufs.is_empty() {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        match rustix::net::sendmsg(sock.as_fd(), bufs, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(Errno::AGAIN) => wait_writable(sock, timeout)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until the socket can take more bytes, or `t` passes.
fn wait_writable(sock: &socket2::Socket, t: Duration) -> io::Result<()> {
    let ts = Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    };
    let mut fds = [PollFd::new(sock, PollFlags::OUT)];
    loop {
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the front server read nothing for {t:?} (--read-timeout)"),
                ))
            }
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A front-server connection owned by a Python thread for the response.
pub struct ConnSink {
    sock: Option<socket2::Socket>,
    tcp: bool,
    written: u64,
    started: Instant,
    write_timeout: Duration,
    style: HeadStyle,
}

impl ConnSink {
    pub fn new(
        sock: socket2::Socket,
        tcp: bool,
        started: Instant,
        write_timeout: Duration,
    ) -> Self {
        ConnSink {
            sock: Some(sock),
            tcp,
            written: 0,
            started,
            write_timeout,
            style: HeadStyle::Http,
        }
    }

    /// How the response head is written (the listener's protocol decides).
    pub fn style(mut self, style: HeadStyle) -> Self {
        self.style = style;
        self
    }

    fn sock(&self) -> io::Result<&socket2::Socket> {
        self.sock
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the connection is closed"))
    }

    fn wait_writable(&self) -> io::Result<()> {
        wait_writable(self.sock()?, self.write_timeout)
    }
}

impl Sink for ConnSink {
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let r = rustix::net::send(self.sock()?.as_fd(), data, SendFlags::NOSIGNAL);
            match r {
                Ok(n) => {
                    data = &data[n..];
                    self.written += n as u64;
                }
                Err(Errno::AGAIN) => self.wait_writable()?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One non-blocking send (the socket is non-blocking, and DONTWAIT says so again):
    /// what the kernel takes now. Safe with the GIL held: it never waits.
    fn try_write(&mut self, data: &[u8], _last: bool) -> io::Result<usize> {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        match rustix::net::send(self.sock()?.as_fd(), data, flags) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// `finish` is a close(2) (after setting SO_LINGER 0 for an abort): it never
    /// waits, whatever is still in the socket buffer (the kernel sends it, or resets).
    fn finish_is_quick(&self) -> bool {
        true
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
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
                Ok(n) => self.written += n as u64,
                Err(Errno::AGAIN) => self.wait_writable()?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: End) -> Sent {
        if let (End::Incomplete(_), true, Some(s)) = (end, self.tcp, &self.sock) {
            // SO_LINGER 0: close() sends a reset, which nginx reports as an upstream
            // error instead of taking the body as complete.
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        // Dropping the socket closes it (FIN, or RST after SO_LINGER 0).
        self.sock = None;
        Sent {
            bytes: self.written,
            started: self.started,
        }
    }

    fn head_style(&self) -> HeadStyle {
        self.style
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
