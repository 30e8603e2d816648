//! Handing idle FastCGI keep-alive connections to the workers that go on serving.
//!
//! A kept connection cannot be closed safely while it is idle: FastCGI has no way to
//! announce a close, so the front server (nginx `fastcgi_keep_conn on`, Apache
//! `enablereuse=on`) may take it from its cache and send a request on it in that very
//! instant, and a POST sent on it is not retried (a 502). So a worker that is replaced
//! (reload, recycling, scale-down, `--max-lifetime`) does not close them: it passes each
//! one, once idle, to the workers that go on serving, which wait on it as on their own.
//! The connection never closes, and the front server never notices. New connections
//! (any protocol) that have sent nothing yet, or whose first bytes came after a
//! `--max-requests` worker took its last request, travel the same way, unread. So does
//! a kept connection with a request waiting, parked in a worker whose Python threads
//! are all busy, to a worker with one free (`Parking::relieve`), and a new connection
//! (any protocol) whose bytes came only once they all were (`relieve_waiting` in the
//! acceptor). A request whose head the slow lane completed while they all were
//! travels with its bytes, as below (`SlowLane::busy_here`): the first free Python
//! thread of any worker, this one's included, takes it from the channel and serves it
//! at once.
//!
//! The master makes one `SOCK_SEQPACKET` socket pair before it forks the first worker
//! (when a listener speaks FastCGI); every worker inherits both ends. A leaving worker
//! sends each idle connection's descriptor (`SCM_RIGHTS`) on one end with the index of
//! its listener; serving workers wait on the other end in their epoll and one of them
//! takes each message. A connection that never carried a request travels with how long
//! it has been open, so `--head-timeout` still closes it on time in its new worker (a
//! kept connection has no deadline: the front server owns its lifetime). Bytes of a next request the front server already sent wait in
//! the socket's kernel buffer and travel with it; nothing of them was read. A request
//! whose whole head the slow lane read when `--max-requests` left no room to begin it
//! travels the same way, with the bytes read (its head and what of its body came with
//! it; FastCGI: its records framed again, and what followed them) in the message,
//! ahead of what is still in the socket; a kept FastCGI connection goes on serving in
//! its new worker after it. A message
//! nobody has taken yet keeps its connection open (the descriptor is in flight), e.g.
//! while a recycled single worker's successor boots; at the final stop the last copy
//! of the pair closes with the master, and the kernel closes what is still in flight.
//! Nothing is handed over once the master is gone: every worker is leaving then, and
//! each treats its kept connections as at the final stop. A kept connection already in
//! the channel then (a replacement was importing) is taken by whichever worker stops
//! next, the replacement once imported, and treated the same: the slow lane answers a
//! request that comes within a moment, then closes it (parked, it closed unread).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// First byte of a message: the format, so a stray datagram is never taken for one.
const MAGIC: u8 = b'K';
/// MAGIC, the listener index (u32, little endian), the kind ([`KEPT`], [`FRESH`],
/// [`WAITING`]), then for a fresh one its start, for a waiting one when its request
/// was first seen waiting, on the machine's monotonic clock (milliseconds, the low 32
/// bits, LE): the receiver counts the time the message spent in the channel too (a
/// message waits there while no serving worker takes it, e.g. while a recycled single
/// worker's successor boots). Before, the sender wrote the age it had then, and that
/// time was lost: the connection closed that much late. Then, with [`LATE`], the ids of
/// bodies answered early; then, for a fresh connection only, the bytes already read
/// from it (at most [`MAX_READ`] in all).
const MESSAGE_LEN: usize = 10;
/// A kept connection, idle (no request waiting on it that anyone saw).
const KEPT: u8 = 0;
/// A connection that never carried a request (under `--head-timeout`).
const FRESH: u8 = 1;
/// A kept connection whose next request is in its socket, unread, sent by a worker
/// whose Python threads were all busy ([`Channel::send_waiting`]).
const WAITING: u8 = 2;
/// Or'ed into a connection's kind (a leaving worker's, with the requests it held for the
/// workers that serve on, or idle; one relieved of a busy worker): the ids of requests
/// answered there while their bodies still came follow the fixed part, a count (one byte) then each id (u16, LE), ahead
/// of the bytes read: the rest of those bodies may still come, and its new worker
/// ignores it quietly, as that worker would have, instead of taking it for records of
/// an id no BEGIN_REQUEST named (which closed the connection at --head-timeout).
const LATE: u8 = 0x40;
/// Most such ids that travel ([`LATE`]): front servers that multiplex use a few.
pub const LATE_MAX: usize = 64;
/// Room they take in a message.
pub const LATE_ROOM: usize = 1 + 2 * LATE_MAX;
/// Or'ed into a kept connection's kind: a request on it said its front server is
/// nginx (`SERVER_SOFTWARE`), which its new worker could not learn otherwise before
/// the connection's next request (an nginx on another host), and which the final
/// stop's answers and nudge depend on.
const SAID_NGINX: u8 = 0x80;
/// Most bytes read from a connection that may travel with it: a whole head (64 KiB
/// and its framing) and what of the body one more read brought.
pub const MAX_READ: usize = 128 * 1024;
/// Longest a leaving worker waits for room in the pair's buffer before it closes the
/// connection instead (serving workers take messages as they come: never reached
/// unless none serves at all).
const SEND_WAIT: Duration = Duration::from_millis(500);

/// The socket pair every worker inherits: `tx` to hand connections over, `rx` to take
/// them.
pub struct Channel {
    tx: OwnedFd,
    rx: OwnedFd,
}

static CHANNEL: OnceLock<Channel> = OnceLock::new();

/// A connection taken from the channel: its socket and the index of its listener.
pub struct Adopted {
    pub sock: socket2::Socket,
    pub listener: usize,
    /// Never carried a request: how long it has been open (its `--head-timeout` runs
    /// from its start, not from the hand-over).
    pub fresh_for: Option<Duration>,
    /// Bytes a leaving worker read from it (a whole request head), to be taken before
    /// the socket's; empty for most.
    pub read: Vec<u8>,
    /// A kept connection whose next request has waited this long for a Python thread
    /// (sent by a worker whose threads were all busy): the request's time in the
    /// access log counts from then.
    pub waited: Option<Duration>,
    /// A request on this kept connection said its front server is nginx ([`SAID_NGINX`]).
    pub said_nginx: bool,
    /// Requests answered by the worker that sent it whose bodies may still come
    /// ([`LATE`]).
    pub late: Vec<u16>,
}

impl Channel {
    /// Made by the master before its first fork (a process that never forks has no
    /// successor to hand anything to): every worker it forks inherits it.
    pub fn create() -> std::io::Result<()> {
        if CHANNEL.get().is_some() {
            return Ok(());
        }
        let _ = CHANNEL.set(Channel::pair()?);
        Ok(())
    }

    /// A new socket pair.
    pub(super) fn pair() -> std::io::Result<Channel> {
        let (tx, rx) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // Room for every idle connection of a busy worker while its successor boots
        // (a `--workers 1` recycling): the default buffer holds a few hundred
        // messages; the kernel caps this at net.core.wmem_max.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&tx, 4 << 20);
        Ok(Channel { tx, rx })
    }

    /// The channel, in a worker forked by a master that made one.
    pub fn get() -> Option<&'static Channel> {
        CHANNEL.get()
    }

    /// Both ends (a child the app forked closes its copies: see `forked`).
    pub fn ends(&self) -> [BorrowedFd<'_>; 2] {
        [self.tx.as_fd(), self.rx.as_fd()]
    }

    /// The end serving workers wait on (level-triggered: every serving worker is
    /// woken, one takes the message).
    pub fn receiver(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    /// Puts the receiving end in a worker's epoll (level-triggered), as
    /// [`Wake::Handover`](crate::server::wake::Wake::Handover).
    pub fn watch(&self, epoll: impl AsFd) -> rustix::io::Result<()> {
        use rustix::event::epoll;
        epoll::add(
            epoll,
            self.receiver(),
            epoll::EventData::new_u64(crate::server::wake::Wake::Handover.encode()),
            epoll::EventFlags::IN,
        )
    }

    /// Takes the receiving end out of a worker's epoll: it takes no more handed-over
    /// connections (they go to the siblings, or wait for the stop).
    pub fn unwatch(&self, epoll: impl AsFd) {
        let _ = rustix::event::epoll::delete(epoll, self.receiver());
    }

    /// Sends one idle connection of listener `listener` to whichever serving worker
    /// takes it. Its kernel buffer (a request that came meanwhile) goes with it.
    /// `fresh_for`: it never carried a request, and has been open that long; `read`:
    /// the bytes already read from such one (at most [`MAX_READ`]), which its new
    /// worker takes before the socket's; `said_nginx`: a request on a kept one said
    /// its front server is nginx; `late`: with `read`, the requests answered whose
    /// bodies may still come ([`LATE`], the first [`LATE_MAX`]). Err: it could not be
    /// sent; the caller still owns (and closes) it.
    pub fn send(
        &self,
        sock: BorrowedFd<'_>,
        listener: usize,
        fresh_for: Option<Duration>,
        read: &[u8],
        said_nginx: bool,
        late: &[u16],
    ) -> std::io::Result<()> {
        // Its master gone, every worker leaves and none reads the channel again: a
        // connection sent now would wait there, its request unread, until the last
        // worker exits. The callers ask first (`Parking`'s successors); this is for
        // a send already under way when the master died.
        if crate::stop::orphaned() {
            return Err(std::io::Error::other(
                "the master is gone: no worker serves on to take the connection",
            ));
        }
        let late = &late[..late.len().min(LATE_MAX)];
        if read.len() + late_len(late) > MAX_READ || (fresh_for.is_none() && !read.is_empty()) {
            return Err(std::io::Error::other(
                "too many bytes read to hand the connection over",
            ));
        }
        let msg = match fresh_for {
            Some(age) => message(listener, FRESH | late_bit(late), age),
            None => message(
                listener,
                KEPT | nginx_bit(said_nginx) | late_bit(late),
                Duration::ZERO,
            ),
        };
        match late_then(late, read) {
            Some(extra) => self.send_message(sock, &msg, &extra, true),
            None => self.send_message(sock, &msg, read, true),
        }
    }

    /// [`Channel::send`] for a connection whose request the slow lane read whole while
    /// every Python thread of this worker was busy (`read`: that request, framed again,
    /// and what followed it), from the I/O thread: never waits for room (a full
    /// channel, `WouldBlock`, leaves the request here). `late`: as for
    /// [`Channel::send`].
    pub fn send_now(
        &self,
        sock: BorrowedFd<'_>,
        listener: usize,
        age: Duration,
        read: &[u8],
        late: &[u16],
    ) -> std::io::Result<()> {
        if crate::stop::orphaned() {
            return Err(std::io::Error::other(
                "the master is gone: no worker serves on to take the connection",
            ));
        }
        let late = &late[..late.len().min(LATE_MAX)];
        if read.len() + late_len(late) > MAX_READ {
            return Err(std::io::Error::other(
                "too many bytes read to hand the connection over",
            ));
        }
        let msg = message(listener, FRESH | late_bit(late), age);
        match late_then(late, read) {
            Some(extra) => self.send_message(sock, &msg, &extra, false),
            None => self.send_message(sock, &msg, read, false),
        }
    }

    /// Sends a kept connection whose next request is in its socket, unread, and has
    /// waited `waited` for a Python thread of this worker (all busy), to a worker
    /// that has one free: its first free Python thread takes it. `late`: as for
    /// [`Channel::send`] (that "request" may be the rest of a body answered early).
    pub fn send_waiting(
        &self,
        sock: BorrowedFd<'_>,
        listener: usize,
        waited: Duration,
        said_nginx: bool,
        late: &[u16],
    ) -> std::io::Result<()> {
        if crate::stop::orphaned() {
            return Err(std::io::Error::other(
                "the master is gone: no worker serves on to take the connection",
            ));
        }
        let late = &late[..late.len().min(LATE_MAX)];
        // Never waits: the I/O thread sends these; a full channel (WouldBlock) leaves
        // the connection here until its next look.
        let msg = message(
            listener,
            WAITING | nginx_bit(said_nginx) | late_bit(late),
            waited,
        );
        let extra = late_then(late, &[]).unwrap_or_default();
        self.send_message(sock, &msg, &extra, false)
    }

    /// Sends one message with `sock`; on a full channel waits up to [`SEND_WAIT`] for
    /// room if `wait`, else fails with `WouldBlock`.
    fn send_message(
        &self,
        sock: BorrowedFd<'_>,
        msg: &[u8; MESSAGE_LEN],
        read: &[u8],
        mut wait: bool,
    ) -> std::io::Result<()> {
        let fds = [sock];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        loop {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("no room for SCM_RIGHTS"));
            }
            match rustix::net::sendmsg(
                &self.tx,
                &[IoSlice::new(msg), IoSlice::new(read)],
                &mut control,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) if wait => {
                    wait = false;
                    let ts = Timespec::try_from(SEND_WAIT).unwrap_or(Timespec {
                        tv_sec: 0,
                        tv_nsec: 500_000_000,
                    });
                    let mut p = [PollFd::new(&self.tx, PollFlags::OUT)];
                    let _ = rustix::event::poll(&mut p, Some(&ts));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes one connection if a message is there (never waits): `None` when another
    /// worker took it first, or the message was not one (its descriptors closed).
    pub fn take(&self) -> Option<Adopted> {
        let mut msg = [0u8; MESSAGE_LEN];
        // calloc'd past the mmap threshold: pages the message does not fill are never
        // touched.
        let mut read = vec![0u8; MAX_READ + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.rx,
                &mut [IoSliceMut::new(&mut msg), IoSliceMut::new(&mut read)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(r) => break r,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a FastCGI connection handed over by a leaving worker");
                    return None;
                }
            }
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            // The kernel could not install the descriptor here (a worker sends one per
            // message, so this is the process's descriptor limit) and closed it: the
            // front server sees that connection close.
            tracing::error!(
                fds = fds.len(),
                "a FastCGI connection handed over by a leaving worker was lost: no file descriptor left to take it (raise ulimit -n / LimitNOFILE=, or lower --max-connections)"
            );
            return None;
        }
        let extra = got.bytes.saturating_sub(MESSAGE_LEN);
        let (said_nginx, has_late) = (msg[5] & SAID_NGINX != 0, msg[5] & LATE != 0);
        let kind = msg[5] & !(SAID_NGINX | LATE);
        let late_len = match read.first() {
            Some(&n) if has_late && extra > 0 => 1 + 2 * usize::from(n),
            _ => 0,
        };
        let well_formed = got.bytes >= MESSAGE_LEN
            && extra <= MAX_READ
            && msg[0] == MAGIC
            && kind <= WAITING
            && (kind == FRESH || extra == late_len)
            && !(kind == FRESH && said_nginx)
            && (!has_late || (late_len > 1 && late_len <= extra.min(LATE_ROOM)))
            && fds.len() == 1;
        if !well_formed {
            tracing::warn!(
                bytes = got.bytes,
                fds = fds.len(),
                "a malformed hand-over message; dropping it"
            );
            return None;
        }
        let listener = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
        let since = || {
            let start = u32::from_le_bytes([msg[6], msg[7], msg[8], msg[9]]);
            Duration::from_millis(u64::from((monotonic_ms() as u32).wrapping_sub(start)))
        };
        let fresh_for = (kind == FRESH).then(since);
        let waited = (kind == WAITING).then(since);
        let fd = fds.pop()?;
        read.truncate(extra);
        let late = read[..late_len]
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        read.drain(..late_len);
        Some(Adopted {
            sock: socket2::Socket::from(fd),
            listener,
            fresh_for,
            read,
            waited,
            said_nginx,
            late,
        })
    }
}

/// `late` (at most [`LATE_MAX`] ids) as a message carries them ([`LATE`]), then `read`;
/// `None` when there are none.
fn late_then(late: &[u16], read: &[u8]) -> Option<Vec<u8>> {
    if late.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(1 + 2 * late.len() + read.len());
    out.push(late.len() as u8);
    for id in late {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(read);
    Some(out)
}

/// Bytes `late` takes in a message ([`late_then`]).
fn late_len(late: &[u16]) -> usize {
    if late.is_empty() {
        0
    } else {
        1 + 2 * late.len()
    }
}

/// [`LATE`] when there are ids to carry.
fn late_bit(late: &[u16]) -> u8 {
    if late.is_empty() {
        0
    } else {
        LATE
    }
}

fn nginx_bit(said: bool) -> u8 {
    if said {
        SAID_NGINX
    } else {
        0
    }
}

/// A message's fixed part: `kind`, and for [`FRESH`] and [`WAITING`] the start of
/// `age` ago.
fn message(listener: usize, kind: u8, age: Duration) -> [u8; MESSAGE_LEN] {
    let mut msg = [0u8; MESSAGE_LEN];
    msg[0] = MAGIC;
    msg[1..5].copy_from_slice(&(listener as u32).to_le_bytes());
    msg[5] = kind;
    if kind & !(SAID_NGINX | LATE) != KEPT {
        // Wraps like the receiver's subtraction: right for any age under ~49 days.
        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let start = monotonic_ms().wrapping_sub(age) as u32;
        msg[6..10].copy_from_slice(&start.to_le_bytes());
    }
    msg
}

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process of the machine (the
/// one `Instant` reads on Linux), so sender and receiver agree on a start.
fn monotonic_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(t.tv_nsec as u64 / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_connection_and_its_unread_bytes_arrive_whole() {
        let ch = Channel::pair().unwrap();
        let (mut front, ours) = UnixStream::pair().unwrap();
        // The front server's next request, sent before the hand-over, read by nobody.
        front.write_all(b"next request").unwrap();
        ch.send(ours.as_fd(), 3, None, &[], false, &[]).unwrap();
        drop(ours);
        let a = ch.take().expect("one connection handed over");
        assert_eq!(a.listener, 3);
        assert_eq!(a.fresh_for, None, "a kept connection has no deadline");
        let mut got = [0u8; 12];
        (&a.sock).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"next request");
        // Still open both ways: the sender's close did not close it.
        (&a.sock).write_all(b"answer").unwrap();
        let mut back = [0u8; 6];
        front.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"answer");
        assert!(ch.take().is_none(), "nothing more to take");
    }

    #[test]
    fn a_kept_connection_carries_whether_its_front_server_said_it_is_nginx() {
        let ch = Channel::pair().unwrap();
        let (_front, ours) = UnixStream::pair().unwrap();
        ch.send(ours.as_fd(), 1, None, &[], true, &[]).unwrap();
        let a = ch.take().expect("a kept one");
        assert!(a.said_nginx && a.fresh_for.is_none() && a.waited.is_none());
        ch.send(ours.as_fd(), 1, None, &[], false, &[]).unwrap();
        assert!(!ch.take().expect("a kept one").said_nginx);
        ch.send_waiting(ours.as_fd(), 1, Duration::from_millis(5), true, &[])
            .unwrap();
        let a = ch.take().expect("a waiting one");
        assert!(a.said_nginx && a.waited.is_some());
        // A fresh connection never carried a request: never marked.
        ch.send(ours.as_fd(), 1, Some(Duration::ZERO), &[], true, &[])
            .unwrap();
        let a = ch.take().expect("a fresh one");
        assert!(!a.said_nginx && a.fresh_for.is_some());
    }

    #[test]
    fn a_fresh_connection_marked_nginx_or_an_unknown_kind_is_dropped() {
        let ch = Channel::pair().unwrap();
        for kind in [FRESH | SAID_NGINX, 0x40, WAITING + 1] {
            let (_front, ours) = UnixStream::pair().unwrap();
            let mut msg = message(0, KEPT, Duration::ZERO);
            msg[5] = kind;
            ch.send_message(ours.as_fd(), &msg, &[], false).unwrap();
            assert!(ch.take().is_none(), "kind {kind:#x} taken");
        }
    }

    #[test]
    fn a_connection_whose_request_waits_arrives_with_that_wait() {
        let ch = Channel::pair().unwrap();
        let (mut front, ours) = UnixStream::pair().unwrap();
        front.write_all(b"request").unwrap();
        ch.send_waiting(ours.as_fd(), 2, Duration::from_millis(700), false, &[])
            .unwrap();
        drop(ours);
        std::thread::sleep(Duration::from_millis(100));
        let a = ch.take().expect("one connection handed over");
        assert_eq!((a.listener, a.fresh_for), (2, None), "a kept connection");
        let waited = a.waited.expect("its request waits");
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(60),
            "the time in the channel counts: {waited:?}"
        );
        let mut got = [0u8; 7];
        (&a.sock).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"request");
        ch.send(front.as_fd(), 0, None, &[], false, &[]).unwrap();
        assert_eq!(ch.take().expect("a kept one").waited, None);
    }

    #[test]
    fn a_waiting_connection_is_never_held_on_a_full_channel() {
        // regression: the I/O thread waited up to SEND_WAIT in poll on a full channel.
        let ch = Channel::pair().unwrap();
        let (_front, ours) = UnixStream::pair().unwrap();
        let full = (0..100_000)
            .map(|_| ch.send_waiting(ours.as_fd(), 0, Duration::ZERO, false, &[]))
            .find_map(Result::err)
            .expect("the channel fills");
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
        let t = std::time::Instant::now();
        let again = ch.send_waiting(ours.as_fd(), 0, Duration::ZERO, false, &[]);
        assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        while ch.take().is_some() {}
    }

    #[test]
    fn a_never_served_connection_arrives_with_its_age() {
        let ch = Channel::pair().unwrap();
        let (_front, ours) = UnixStream::pair().unwrap();
        ch.send(
            ours.as_fd(),
            0,
            Some(Duration::from_millis(1500)),
            &[],
            false,
            &[],
        )
        .unwrap();
        // Taken a while later: that time counts too (regression: the age at sending
        // was taken as the age at taking, so a message left in the channel while no
        // worker was free to take it gave its connection that much more time).
        std::thread::sleep(Duration::from_millis(300));
        let a = ch.take().expect("one connection handed over");
        let age = a.fresh_for.expect("never served: it has an age");
        assert!(
            age >= Duration::from_millis(1800),
            "the time in the channel counts: {age:?}"
        );
        assert!(age < Duration::from_secs(600), "a sane age: {age:?}");
    }

    #[test]
    fn bytes_read_from_a_connection_travel_ahead_of_its_own() {
        let ch = Channel::pair().unwrap();
        let (mut front, ours) = UnixStream::pair().unwrap();
        front.write_all(b" rest").unwrap();
        let head = vec![7u8; 70_000];
        ch.send(ours.as_fd(), 1, Some(Duration::ZERO), &head, false, &[])
            .unwrap();
        assert!(
            ch.send(ours.as_fd(), 1, None, b"x", false, &[]).is_err(),
            "a kept connection carries no bytes"
        );
        let a = ch.take().expect("one connection handed over");
        assert_eq!(a.read, head);
        let mut got = [0u8; 5];
        (&a.sock).read_exact(&mut got).unwrap();
        assert_eq!(&got, b" rest");
    }

    #[test]
    fn the_ids_of_bodies_answered_early_travel_with_a_connection() {
        let ch = Channel::pair().unwrap();
        let (_front, ours) = UnixStream::pair().unwrap();
        let held = vec![9u8; 1000];
        ch.send(
            ours.as_fd(),
            1,
            Some(Duration::ZERO),
            &held,
            false,
            &[2, 300],
        )
        .unwrap();
        let a = ch.take().expect("a fresh one");
        assert_eq!((a.late, a.read), (vec![2, 300], held.clone()));
        // Idle (kept), and past LATE_MAX: the first ones.
        let many: Vec<u16> = (1..=100).collect();
        ch.send(ours.as_fd(), 1, None, &[], true, &many).unwrap();
        let a = ch.take().expect("a kept one");
        assert!(a.said_nginx && a.fresh_for.is_none() && a.read.is_empty());
        assert_eq!(a.late, many[..LATE_MAX]);
        // None: none travel.
        ch.send(ours.as_fd(), 1, Some(Duration::ZERO), b"x", false, &[])
            .unwrap();
        let a = ch.take().expect("a fresh one");
        assert_eq!((a.late.len(), &a.read[..]), (0, &b"x"[..]));
        // Relieved of a busy worker: as kept.
        ch.send_waiting(ours.as_fd(), 1, Duration::ZERO, false, &[7])
            .unwrap();
        let a = ch.take().expect("a waiting one");
        assert!(a.waited.is_some() && a.read.is_empty());
        assert_eq!(a.late, [7]);
        // A request the slow lane read whole, handed on from the I/O thread (every
        // thread busy, or no room under --max-requests): with the ids, ahead of it.
        ch.send_now(ours.as_fd(), 1, Duration::ZERO, &held, &[4])
            .unwrap();
        let a = ch.take().expect("a fresh one");
        assert_eq!((a.late, a.read), (vec![4], held));
        let full = vec![9u8; MAX_READ - 2];
        assert!(
            ch.send_now(ours.as_fd(), 1, Duration::ZERO, &full, &[4])
                .is_err(),
            "the ids count against MAX_READ"
        );
        // A kept one's fixed part has no start (nothing reads it).
        assert_eq!(
            message(1, KEPT | LATE | SAID_NGINX, Duration::ZERO)[6..],
            [0; 4]
        );
        // Never a count past the bytes that came, nor bytes past the ids but for a
        // fresh one.
        for (kind, extra) in [
            (WAITING | LATE, vec![3u8, 5, 0]),
            (FRESH | LATE, vec![3u8, 5, 0]),
            (KEPT | LATE, vec![1u8, 5, 0, 9]),
        ] {
            let mut msg = message(1, kind, Duration::ZERO).to_vec();
            msg.extend_from_slice(&extra);
            send_raw(&ch, &msg, &[ours.as_fd()]);
            assert!(ch.take().is_none(), "kind {kind:#x}");
        }
    }

    #[test]
    fn descriptors_the_receiver_cannot_install_are_not_taken_for_a_connection() {
        // More descriptors than the receive buffer has room for: the kernel closes the
        // rest and says MSG_CTRUNC, as when the receiver is out of descriptors.
        let ch = Channel::pair().unwrap();
        let socks: Vec<_> = (0..5).map(|_| UnixStream::pair().unwrap().0).collect();
        let fds: Vec<BorrowedFd<'_>> = socks.iter().map(|s| s.as_fd()).collect();
        let mut msg = [0u8; MESSAGE_LEN];
        msg[0] = MAGIC;
        send_raw(&ch, &msg, &fds);
        assert!(ch.take().is_none());
        assert!(ch.take().is_none(), "nothing more to take");
    }

    /// Sends `msg` with `fds` (five at most) on the channel, as no worker would.
    fn send_raw(ch: &Channel, msg: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        rustix::net::sendmsg(
            &ch.tx,
            &[IoSlice::new(msg)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    #[test]
    fn a_message_that_is_not_a_hand_over_is_dropped() {
        let ch = Channel::pair().unwrap();
        rustix::net::send(&ch.tx, b"Kxx", SendFlags::empty()).unwrap();
        assert!(ch.take().is_none());
    }
}
