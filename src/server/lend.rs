//! Large response bodies sent over a Unix socket without copying them, on Linux 6.5 or
//! later: the body's pages are put in a pipe with vmsplice(2) and spliced from it into
//! the socket, where the kernel queues them on the front server's side by reference
//! (af_unix takes spliced pages as they are since 6.5) instead of copying them into its
//! own buffers. Copying a 1 MiB body into a Unix socket costs about 150 µs of kernel
//! time; lending its pages about 35 (docs/performance.md, "Lending large bodies").
//!
//! The catch: the front server reads those pages later, so the body must stay alive
//! and unchanged until it has read them, and an app's `bytes` is freed (its memory
//! reused) as soon as the response is sent. So only a body's first part is lent; its
//! last [`tail`] bytes, twice the socket's send buffer, are sent with an ordinary,
//! copying blocking send. The kernel lets a send queue a buffer only while less than a
//! send buffer's worth of what this socket sent is still queued unread, and the front
//! server reads and frees the queue in order, so by the time the tail has been queued
//! every lent page has been read and freed. That is checked, not assumed
//! ([`ConnSink::write_lent`](super::sink::ConnSink)): SIOCOUTQ (what this socket sent
//! that is still queued, [`unread`]) below the tail's length means no lent page is
//! left, since a lent page still queued would have the whole tail queued behind it. A
//! send that fails part-way leaves the body to its caller to keep ([`crate::wsgi::Lent`]).
//!
//! Before 6.5 a splice into a Unix socket added pages to the last buffer already
//! queued, which the reasoning above does not cover: bodies are copied there.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rustix::io::Errno;
use rustix::pipe::{IoSliceRaw, PipeFlags, SpliceFlags};

/// A body is lent only when at least this much of it goes before its copied tail:
/// below it the pipe's system calls cost about what the copy they save does.
pub const MIN_LENT: usize = 256 * 1024;

/// The pipe's capacity asked for: a 1 MiB body's lent part in about three rounds
/// (a vmsplice and a splice each). Pages count against the user's pipe limit
/// (`fs.pipe-user-pages-soft`, 16384 pages by default): 64 per Python thread that ever
/// sent a large body.
const PIPE_SIZE: usize = 256 * 1024;

/// The copied tail for a socket whose send buffer is `sndbuf` bytes: twice it. When a
/// blocking send of the tail returns, less than a send buffer and one buffer of at
/// most half of it are still queued, all of them the tail's.
pub fn tail(sndbuf: usize) -> usize {
    sndbuf.saturating_mul(2)
}

/// Whether this kernel queues spliced pages on a Unix socket as buffers of their own
/// (6.5 or later), and lending has not been turned off ([`disable`]).
pub fn available() -> bool {
    static KERNEL: OnceLock<bool> = OnceLock::new();
    !DISABLED.load(Ordering::Relaxed)
        && *KERNEL.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .and_then(|r| release_at_least(&r, (6, 5)))
                .unwrap_or(false)
        })
}

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Lending is off for the rest of the process's life (the kernel did not behave as
/// this module expects: [`crate::wsgi::Lent::Kept`]).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// `release` ("6.18.44-generic") is at least `min` (major, minor); `None` when it does
/// not read as a version.
fn release_at_least(release: &str, min: (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse::<u32>().ok()?;
    let minor = parts.next()?.parse::<u32>().ok()?;
    Some((major, minor) >= min)
}

/// Bytes this (Unix) socket sent that are still queued on the peer's side, unread or
/// not yet freed (SIOCOUTQ). `None` when it cannot be told.
pub fn unread(sock: BorrowedFd<'_>) -> Option<usize> {
    use rustix::ioctl::{ioctl, Getter, Opcode};
    const SIOCOUTQ: Opcode = libc::TIOCOUTQ as Opcode;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int.
    let queued = unsafe { ioctl(sock, Getter::<SIOCOUTQ, libc::c_int>::new()) }.ok()?;
    usize::try_from(queued).ok()
}

/// A connection a failed lent write left pages queued on, shut down (the front server
/// sees its end as it would a close), kept open only to ask it what is still queued.
pub struct Queued(pub OwnedFd);

impl crate::wsgi::Drained for Queued {
    /// Nothing queued; unknown counts as queued.
    fn drained(&self) -> bool {
        unread(self.0.as_fd()) == Some(0)
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    /// This thread's pipe, made by its first lent body. Empty between bodies; dropped
    /// (closed) after a failed one, whose pages it may still hold.
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

fn new_pipe() -> io::Result<Pipe> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // Past the user's pipe limit the kernel refuses a larger pipe: the default one
    // (16 pages) then serves, in more rounds.
    let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
    Ok(Pipe { read, write })
}

/// Sends `head` (copied into the pipe: it is the caller's to free at once) then `lent`
/// (lent: see the module's comment) to `sock`, which the caller made blocking with a
/// send timeout (SO_SNDTIMEO: a splice into a blocking socket waits for room as a send
/// does, a slice of the timeout at a time). `wait` waits for room after a send timed out with nothing sent, and
/// fails when the front server read nothing for the write timeout. `sent` counts the
/// bytes queued on the socket as they go.
pub fn splice_all(
    sock: BorrowedFd<'_>,
    head: &[u8],
    lent: &[u8],
    sent: &mut u64,
    wait: &mut dyn FnMut() -> io::Result<()>,
) -> io::Result<()> {
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::debug!(
                    "a large body is lent to the kernel, not copied (its pages spliced into the Unix socket)"
                );
            });
            *slot = Some(new_pipe()?);
        }
        let Some(pipe) = slot.as_ref() else {
            unreachable!("made just above")
        };
        let r = pump(pipe, sock, head, lent, sent, wait);
        if r.is_err() {
            // It may still hold pages of `lent` (or of the head): a new pipe for the
            // next body, and the pages go with this one.
            *slot = None;
        }
        r
    })
}

fn pump(
    pipe: &Pipe,
    sock: BorrowedFd<'_>,
    mut head: &[u8],
    lent: &[u8],
    sent: &mut u64,
    wait: &mut dyn FnMut() -> io::Result<()>,
) -> io::Result<()> {
    let mut off = 0;
    let mut in_pipe = 0usize;
    loop {
        while !head.is_empty() {
            match rustix::io::write(&pipe.write, head) {
                Ok(n) => {
                    head = &head[n..];
                    in_pipe += n;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        while head.is_empty() && off < lent.len() {
            let iov = [IoSliceRaw::from_slice(&lent[off..])];
            // SAFETY: the write end of a pipe, so the kernel only reads `lent`'s pages
            // (it takes references to them). That they stay unchanged until the front
            // server has read them is what the tail and the check after it see to
            // (module comment), or the caller's keeping of the body on a failure.
            match unsafe { rustix::pipe::vmsplice(&pipe.write, &iov, SpliceFlags::NONBLOCK) } {
                Ok(0) => break,
                Ok(n) => {
                    off += n;
                    in_pipe += n;
                    if off < lent.len() {
                        break; // the pipe is full: no call only to hear so
                    }
                }
                Err(Errno::AGAIN) => break, // the pipe is full
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if in_pipe == 0 {
            return Ok(());
        }
        match rustix::pipe::splice(
            &pipe.read,
            None,
            sock.as_fd(),
            None,
            in_pipe,
            SpliceFlags::empty(),
        ) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection took no bytes",
                ))
            }
            Ok(n) => {
                in_pipe -= n;
                *sent += n as u64;
            }
            // The send timeout passed with nothing taken: wait for room as a send does.
            Err(Errno::AGAIN) => wait()?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert_eq!(release_at_least("6.18.44-fc-v1272", (6, 5)), Some(true));
        assert_eq!(release_at_least("6.5.0", (6, 5)), Some(true));
        assert_eq!(release_at_least("6.4.16-1\n", (6, 5)), Some(false));
        assert_eq!(release_at_least("5.15.0-91-generic", (6, 5)), Some(false));
        assert_eq!(release_at_least("7.0-rc1", (6, 5)), Some(true));
        assert_eq!(release_at_least("garbage", (6, 5)), None);
    }

    /// A lent body arrives whole and in order, the head first, and once the tail has
    /// been sent after it nothing lent is queued any more.
    #[test]
    fn a_lent_body_and_its_copied_tail_arrive_whole_and_the_lent_pages_are_freed() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        if !available() {
            eprintln!("skipped: this kernel queues spliced pages differently (before 6.5)");
            return;
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        let sndbuf = socket2::SockRef::from(&a).send_buffer_size().unwrap();
        let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let t = tail(sndbuf);
        let (lent, rest) = body.split_at(body.len() - t);
        let mut sent = 0;
        splice_all(a.as_fd(), b"HEAD", lent, &mut sent, &mut || Ok(())).unwrap();
        assert_eq!(sent, (4 + lent.len()) as u64);
        (&a).write_all(rest).unwrap();
        let queued = unread(a.as_fd()).unwrap();
        assert!(
            queued < rest.len(),
            "{queued} still queued, tail {}",
            rest.len()
        );
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"HEAD");
        assert!(got[4..] == body[..], "the body arrived changed");
    }
}
