//! New connections that had sent nothing yet when accepted: behind nginx under load
//! the first recv after accept4 often finds nothing (nginx connects, then writes).
//! Instead of the slow lane (a tokio task that reads the head, then a hand-off back
//! through the ready queue: two thread hops and their wake-ups per request), such a
//! connection waits in the Python threads' own epoll (one-shot, [`Wake::Fresh`]) and
//! the thread that sees it readable reads and serves it inline, like a fresh accept.
//!
//! Nothing here waits on a Python thread's time: a connection that then sends part of
//! a head goes to the slow lane (the fast path's rule for partial reads); one silent
//! until `--head-timeout`, and all of them at stop, go to the slow lane as they would
//! have at accept, which answers them exactly as before (its timeout, its log line, its
//! stop rules). The number waiting here is bounded; past it, the slow lane as before.
//! One whose bytes are there but that `--max-requests` left no room to begin is held
//! here, unread and out of the epoll, until the stop hands it to the workers that serve
//! on (looked at again every `--head-timeout`, should room have come back).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use super::admission::Permit;
use super::fastcgi::FcgiConn;
use super::wake::Wake;

/// Most connections waiting here per process (without `--max-requests`, which bounds
/// them by `--max-connections` only); more go to the slow lane.
pub const MAX_WAITING: usize = 1024;

/// How soon a connection held for want of room is looked at again when only places
/// reserved for reads under way (a recv and a parse each) held that room.
pub const SOON: Duration = Duration::from_millis(2);

/// A connection waiting for its first bytes.
pub enum Waiting {
    /// uwsgi or SCGI, from listener `listener`.
    Plain {
        sock: socket2::Socket,
        peer: Arc<str>,
        listener: usize,
        permit: Permit,
        /// Bytes a leaving worker's slow lane read from it (a whole head it had no
        /// room to begin), to be taken before the socket's: such one is only ever
        /// held, never in the epoll. Empty for every other.
        read: bytes::BytesMut,
    },
    /// FastCGI, held (its owner is `Held`), not yet parked.
    Fcgi(Arc<FcgiConn>),
}

impl Waiting {
    /// Its `--max-requests` place, if it holds one.
    pub(super) fn permit(&self) -> Option<&Permit> {
        match self {
            Waiting::Plain { permit, .. } => Some(permit),
            Waiting::Fcgi(conn) => conn.permit(),
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Waiting::Plain { sock, .. } => sock.as_fd(),
            Waiting::Fcgi(c) => c.as_fd(),
        }
    }
}

/// A waiting connection and when it was accepted (its `--head-timeout` counts from
/// there, as in the slow lane).
pub struct Entry {
    pub conn: Waiting,
    pub started: Instant,
}

struct State {
    /// False once stopping: nothing waits here any more.
    open: bool,
    next: u64,
    /// By key, which counts up in accept order: with one timeout for all, the first
    /// entry is also the first to expire.
    conns: BTreeMap<u64, Entry>,
    /// Held for the workers that serve on ([`Pending::hold`]): out of the epoll, each
    /// with when to look at it again.
    held: Vec<(Instant, Entry)>,
}

/// The connections waiting in the Python threads' epoll for their first bytes.
pub struct Pending {
    epoll: Arc<OwnedFd>,
    timeout: Duration,
    max: usize,
    state: Mutex<State>,
    /// `conns.len() + held.len()`, read without the lock on every wait.
    len: AtomicUsize,
}

impl Pending {
    /// `--head-timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `timeout`: how long a connection may stay silent (`--head-timeout`).
    pub fn new(epoll: Arc<OwnedFd>, timeout: Duration, max: usize) -> Pending {
        Pending {
            epoll,
            timeout,
            max,
            state: Mutex::new(State {
                open: true,
                next: 0,
                conns: BTreeMap::new(),
                held: Vec::new(),
            }),
            len: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `conn` wait here for its first bytes; gives it back when it cannot (full,
    /// stopping, or the epoll refused it): the slow lane takes it then.
    pub fn wait(&self, conn: Waiting, started: Instant) -> Result<(), Waiting> {
        let mut st = self.state();
        if !st.open || st.conns.len() >= self.max {
            return Err(conn);
        }
        let key = st.next;
        // One-shot: the event that reports its bytes (or its close) disarms it, so
        // exactly one thread takes it; the registration dies with the socket.
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let data = epoll::EventData::new_u64(Wake::Fresh(key).encode());
        // Listed under the lock before the event can be taken (take needs the lock).
        if epoll::add(&*self.epoll, conn.fd(), data, flags).is_err() {
            return Err(conn);
        }
        st.next += 1;
        st.conns.insert(key, Entry { conn, started });
        self.len
            .store(st.conns.len() + st.held.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The connection an epoll event names, now this thread's; `None` when the stop
    /// or its timeout took it first.
    pub fn take(&self, key: u64) -> Option<Entry> {
        let mut st = self.state();
        let e = st.conns.remove(&key);
        self.len
            .store(st.conns.len() + st.held.len(), Ordering::Relaxed);
        e
    }

    /// Something waits here (waiting in the epoll, or held): one load.
    pub fn any(&self) -> bool {
        self.len.load(Ordering::Relaxed) > 0
    }

    /// The keys of the connections waiting in the epoll whose first bytes have come
    /// (not a close): one poll of them, no wait. For the busy watch, while every
    /// Python thread of this worker runs a request ([`Pending::take_out`]).
    pub fn with_input(&self) -> Vec<u64> {
        if !self.any() {
            return Vec::new();
        }
        let st = self.state();
        let interest = rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP;
        let mut fds: Vec<rustix::event::PollFd<'_>> = st
            .conns
            .values()
            .map(|e| rustix::event::PollFd::from_borrowed_fd(e.conn.fd(), interest))
            .collect();
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
            return Vec::new();
        }
        let gone = rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR;
        fds.iter()
            .zip(st.conns.iter())
            .filter(|(f, (_, e))| {
                let r = f.revents();
                if !r.contains(rustix::event::PollFlags::IN) || r.intersects(gone) {
                    return false;
                }
                // Its peer shut its side: a request sent before that is input, a close
                // alone is not.
                !r.contains(rustix::event::PollFlags::RDHUP) || has_bytes(e.conn.fd())
            })
            .map(|(_, (k, _))| *k)
            .collect()
    }

    /// Takes the connection `key` names out of the epoll as well (to go to another
    /// worker); `None` when a Python thread, the stop or its timeout took it first.
    pub fn take_out(&self, key: u64) -> Option<Entry> {
        let e = self.take(key)?;
        let _ = epoll::delete(&*self.epoll, e.conn.fd());
        Some(e)
    }

    /// Lists again a connection just taken (its key, its deadline), left unread: its
    /// one-shot event is spent, so nothing wakes for it until the stop or its
    /// timeout takes it. Gives it back when stopping.
    pub fn put_back(&self, key: u64, e: Entry) -> Result<(), Entry> {
        let mut st = self.state();
        if !st.open {
            return Err(e);
        }
        st.conns.insert(key, e);
        self.len
            .store(st.conns.len() + st.held.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Keeps a connection whose bytes are there, unread, past its `--head-timeout`
    /// because `--max-requests` left no room to begin it (already out of the epoll):
    /// it waits for the stop that follows (this worker has taken its last request and
    /// recycles), which hands it to the workers that serve on. A request sent in time
    /// is not closed for the time it spent waiting for a worker with room. [`expired`]
    /// gives it back after `again` all the same, to be looked at again: every
    /// `--head-timeout` ([`Pending::timeout`]) when the worker has taken its last
    /// request, [`SOON`] when only places reserved for reads under way held the room
    /// (they are given back when those reads find no whole head). Gives it back when
    /// stopping.
    ///
    /// [`expired`]: Pending::expired
    pub fn hold(&self, e: Entry, again: Duration) -> Result<(), Entry> {
        let mut st = self.state();
        if !st.open {
            return Err(e);
        }
        st.held.push((Instant::now() + again, e));
        self.len
            .store(st.conns.len() + st.held.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Takes the held connections now, whenever they were to be looked at again.
    pub fn take_held(&self) -> Vec<Entry> {
        let mut st = self.state();
        let held = std::mem::take(&mut st.held);
        self.len.store(st.conns.len(), Ordering::Relaxed);
        held.into_iter().map(|(_, e)| e).collect()
    }

    /// How long the epoll may wait before the oldest waiting connection's timeout;
    /// `None` when nothing waits here.
    pub fn wait_limit(&self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|d| d.saturating_duration_since(now))
    }

    /// When the first waiting connection's timeout passes (or a held one is to be
    /// looked at again); `None` when nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let st = self.state();
        let first = st
            .conns
            .first_key_value()
            .map(|(_, e)| e.started + self.timeout);
        let held = st.held.iter().map(|(at, _)| *at).min();
        first.into_iter().chain(held).min()
    }

    /// Takes the connections whose timeout has passed (out of the epoll), and the held
    /// ones due to be looked at again.
    pub fn expired(&self, now: Instant) -> Vec<Entry> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut st = self.state();
        let mut out = Vec::new();
        while let Some(first) = st.conns.first_entry() {
            if first.get().started + self.timeout > now {
                break;
            }
            out.push(first.remove());
        }
        let in_epoll = out.len();
        if st.held.iter().any(|(at, _)| *at <= now) {
            let (due, keep) = std::mem::take(&mut st.held)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            st.held = keep;
            out.extend(due.into_iter().map(|(_, e): (Instant, Entry)| e));
        }
        self.len
            .store(st.conns.len() + st.held.len(), Ordering::Relaxed);
        drop(st);
        for e in &out[..in_epoll] {
            let _ = epoll::delete(&*self.epoll, e.conn.fd());
        }
        out
    }

    /// At stop: nothing waits here any more; returns the connections that were
    /// waiting (out of the epoll) and those held, for the workers that serve on or
    /// the slow lane.
    pub fn close(&self) -> Vec<Entry> {
        let mut st = self.state();
        st.open = false;
        let mut out: Vec<Entry> = std::mem::take(&mut st.conns).into_values().collect();
        self.len.store(0, Ordering::Relaxed);
        let held = std::mem::take(&mut st.held);
        drop(st);
        for e in &out {
            let _ = epoll::delete(&*self.epoll, e.conn.fd());
        }
        out.extend(held.into_iter().map(|(_, e)| e));
        out
    }
}

/// Bytes wait in `fd` (a look, nothing read).
fn has_bytes(fd: BorrowedFd<'_>) -> bool {
    let mut one = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    matches!(rustix::net::recv(fd, &mut one[..], flags), Ok((n, _)) if n > 0)
}

/// Keeps the waiting connections' `--head-timeout` on the I/O thread, until `stop`:
/// `expire(now)` takes those due (the same step the Python thread with the accept token
/// runs before it waits). Without it a connection's timeout waited for a Python thread
/// free to hold the token: with every thread running a request (a slow app, a stalled
/// stream), or the token's holder asleep on a limit computed before the connection
/// began to wait (another thread put it there after giving the token back), it stayed
/// open until some other event woke that thread, seconds later or never.
///
/// Nothing in a request's path wakes this: it sleeps until the first waiting
/// connection's deadline, or, when none waits, for one `--head-timeout` (a connection
/// that begins to wait meanwhile, accepted from then on, is due no sooner).
pub async fn keep_timeouts(
    pending: &Pending,
    expire: impl Fn(Instant),
    stop: tokio_util::sync::CancellationToken,
) {
    // One wake-up per look (an idle worker's: one per --head-timeout).
    let mut timer = super::timer::Timer::new();
    loop {
        let at = pending
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + pending.timeout.max(super::timer::RESOLUTION));
        tokio::select! {
            () = timer.sleep_until(at) => {}
            _ = stop.cancelled() => return,
        }
        expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (socket2::Socket, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (socket2::Socket::from(a), b)
    }

    fn plain(sock: socket2::Socket) -> Waiting {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let admission = super::super::admission::Admission::new(
            64,
            super::super::arming::Arming::new(Arc::new(ep), Arc::default()),
        );
        Waiting::Plain {
            sock,
            peer: Arc::from("test"),
            listener: 0,
            permit: admission.admit(),
            read: bytes::BytesMut::new(),
        }
    }

    fn pending(timeout: Duration, max: usize) -> Pending {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        Pending::new(Arc::new(ep), timeout, max)
    }

    #[test]
    fn a_waiting_connection_is_taken_once() {
        let p = pending(Duration::from_secs(60), 4);
        let (s, _peer) = pair();
        assert!(p.wait(plain(s), Instant::now()).is_ok());
        assert!(p.take(0).is_some());
        assert!(p.take(0).is_none());
        assert_eq!(p.wait_limit(Instant::now()), None);
    }

    #[test]
    fn past_the_bound_the_connection_is_given_back() {
        let p = pending(Duration::from_secs(60), 2);
        let mut keep = Vec::new();
        for _ in 0..2 {
            let (s, peer) = pair();
            keep.push(peer);
            assert!(p.wait(plain(s), Instant::now()).is_ok());
        }
        let (s, _peer) = pair();
        assert!(p.wait(plain(s), Instant::now()).is_err());
    }

    #[test]
    fn the_oldest_sets_the_wait_and_expires_first() {
        let p = pending(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let (a, _pa) = pair();
        let (b, _pb) = pair();
        p.wait(plain(a), t0).ok().unwrap();
        p.wait(plain(b), t0 + Duration::from_secs(3)).ok().unwrap();
        assert_eq!(p.wait_limit(t0), Some(Duration::from_secs(10)));
        assert!(p.expired(t0 + Duration::from_secs(9)).is_empty());
        let gone = p.expired(t0 + Duration::from_secs(11));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].started, t0);
        assert_eq!(
            p.wait_limit(t0 + Duration::from_secs(11)),
            Some(Duration::from_secs(2))
        );
        // Taken by the timeout: an event for it finds nothing.
        assert!(p.take(0).is_none());
        assert!(p.take(1).is_some());
    }

    // The busy watch's look: only a connection whose bytes came is named (not a silent
    // one, not one closed with nothing sent; one that sent its request and shut its
    // side, yes), and the one taken out is no longer in the epoll (adding it again
    // works, as when its hand-over fails).
    #[test]
    fn the_busy_watch_sees_only_connections_whose_bytes_came() {
        use std::io::Write;
        let p = pending(Duration::from_secs(10), 8);
        let (silent, _ps) = pair();
        let (sent, mut ps) = pair();
        let (closed, pc) = pair();
        let (half, mut ph) = pair();
        let t0 = Instant::now();
        for s in [silent, sent, closed, half] {
            p.wait(plain(s), t0).ok().unwrap();
        }
        assert!(p.any());
        assert!(p.with_input().is_empty());
        ps.write_all(b"a request").unwrap();
        drop(pc);
        ph.write_all(b"a request").unwrap();
        ph.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(p.with_input(), vec![1, 3]);
        let e = p.take_out(1).expect("still waiting");
        assert!(p.take_out(1).is_none(), "taken once");
        assert_eq!(p.with_input(), vec![3]);
        p.wait(e.conn, e.started).ok().expect("back in the epoll");
        assert_eq!(p.with_input(), vec![3, 4]);
    }

    // The timer alone closes a waiting connection (before a9742bc only a Python thread
    // about to wait on the epoll did; with none free it stayed open).
    #[test]
    fn the_io_thread_expires_a_waiting_connection_with_no_python_thread_looking() {
        let p = Arc::new(pending(Duration::from_millis(50), 8));
        let (a, _pa) = pair();
        p.wait(plain(a), Instant::now()).ok().unwrap();
        let gone = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        // With its I/O driver, as the server's (keep_timeouts' timer is a timerfd).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let task = tokio::spawn({
                let (p, gone, stop) = (Arc::clone(&p), Arc::clone(&gone), stop.clone());
                async move {
                    keep_timeouts(&p, |now| gone.lock().unwrap().extend(p.expired(now)), stop).await
                }
            });
            // A bound against a hang, not a measure.
            let deadline = Instant::now() + Duration::from_secs(20);
            while gone.lock().unwrap().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.cancel();
            task.await.unwrap();
        });
        assert_eq!(gone.lock().unwrap().len(), 1, "expired by the timer task");
        assert!(p.take(0).is_none(), "and no longer waiting");
    }

    #[test]
    fn a_held_connection_is_looked_at_again_and_goes_with_the_stop() {
        let p = pending(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let (a, _pa) = pair();
        p.wait(plain(a), t0).ok().unwrap();
        let gone = p.expired(t0 + Duration::from_secs(11));
        assert_eq!(gone.len(), 1);
        let held_at = Instant::now();
        for e in gone {
            assert!(p.hold(e, p.timeout()).is_ok());
        }
        let again = p.next_deadline().expect("held: looked at again");
        assert!(again >= held_at + Duration::from_secs(10));
        assert!(p.expired(held_at).is_empty(), "not before its time");
        let back = p.expired(again);
        assert_eq!(back.len(), 1, "given back to be looked at again");
        assert_eq!(back[0].started, t0, "with its accept time");
        for e in back {
            assert!(p.hold(e, p.timeout()).is_ok());
        }
        assert_eq!(p.close().len(), 1, "the stop takes it");
        let (b, _pb) = pair();
        let e = Entry {
            conn: plain(b),
            started: t0,
        };
        assert!(
            p.hold(e, p.timeout()).is_err(),
            "nothing is held after the stop"
        );
    }

    // A worker that waited at --max-requests accepts again: what it held is taken up
    // at once, not at its next look; the connections still waiting stay.
    #[test]
    fn held_connections_are_taken_at_once_when_the_worker_accepts_again() {
        let p = pending(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let (a, _pa) = pair();
        let (b, _pb) = pair();
        p.wait(plain(a), t0).ok().unwrap();
        let (c, _pc) = pair();
        let e = Entry {
            conn: plain(c),
            started: t0,
        };
        assert!(p.hold(e, p.timeout()).is_ok());
        p.wait(plain(b), t0).ok().unwrap();
        let held = p.take_held();
        assert_eq!(held.len(), 1);
        assert!(p.take_held().is_empty());
        assert_eq!(p.close().len(), 2, "the waiting ones stay");
    }

    #[test]
    fn after_the_stop_nothing_waits() {
        let p = pending(Duration::from_secs(60), 8);
        let (a, _pa) = pair();
        p.wait(plain(a), Instant::now()).ok().unwrap();
        assert_eq!(p.close().len(), 1);
        let (b, _pb) = pair();
        assert!(p.wait(plain(b), Instant::now()).is_err());
        assert!(p.take(0).is_none());
    }
}
