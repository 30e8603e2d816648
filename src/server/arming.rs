//! Where a worker's listeners wait for connections, and whether they are there now.
//!
//! Three things decide whether a listener is watched: admission (`--max-connections`,
//! the descriptor limit, `--max-requests`: [`super::admission`]), the event loop of an
//! ASGI worker (it stops watching at `--max-concurrency` and when it drains), and a
//! listener found shut under the process (it leaves for good). This is the one place
//! that puts a listener into an epoll or takes it out, so that the three never undo
//! each other.
//!
//! Where: a WSGI worker's listeners sit in the epoll its Python threads wait on (one
//! thread at a time, the accept token). An ASGI worker's sit in the event loop's own
//! epoll, registered `EPOLLEXCLUSIVE` ([`Arming::move_to_loop`]): the kernel then
//! wakes the loop of one idle worker per new connection, not the loop of every idle
//! worker. That needs the loop's thread to wait on the epoll holding the listener
//! itself: an epoll inside another one (the acceptor's epoll watched by the loop) wakes
//! every loop whatever its flags, because the kernel's exclusive wake-up stops at the
//! first epoll with a thread waiting on it directly, and a nested one has none. The
//! event's data is the number of a descriptor the loop watches for this alone (an
//! eventfd never written, the loop's "mark"): the loop calls the mark's callback, which
//! accepts first ([`super::acceptor`]), apart from the acceptor epoll's callback (kept
//! FastCGI connections, connections waiting for their first bytes), so that each gets
//! its turn when the loop polls.
//!
//! Not for the WSGI threads: a thread takes one event per wait and may take another
//! event (a kept FastCGI connection's request) than the connection that woke it, and
//! the other idle workers, not woken, would leave that connection waiting for the
//! whole request. An event loop takes every ready event in the same turn.
//!
//! An exclusive wake-up goes to the first idle worker in the listener's queue, so
//! under light load one worker would take every connection: a worker that has taken
//! [`MOVE_AFTER`] connections and held the front for [`MOVE_EVERY`] moves its place
//! to the back (two `epoll_ctl`), and the next idle worker takes the next connections.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;

use super::listener::Listener;
use super::wake::Wake;

/// Connections taken from the front of the queue before a worker may move back.
pub const MOVE_AFTER: u32 = 16;
/// And the time it held the front.
pub const MOVE_EVERY: Duration = Duration::from_millis(100);

/// The epoll the listeners are in.
enum Place {
    /// The acceptor's epoll (the WSGI threads wait on it), each listener's data its
    /// [`Wake::Listener`], level-triggered, not exclusive.
    Threads(Arc<OwnedFd>),
    /// The event loop's own epoll, exclusive; `data`: the loop's mark (an fd it
    /// watches with its accept callback).
    Loop { epoll: RawFd, data: u64 },
}

struct State {
    place: Place,
    /// Admission lets the worker accept.
    admitted: bool,
    /// The event loop watches (always, for WSGI threads).
    watched: bool,
    /// The worker stopped accepting: the loop never watches again.
    stopped: bool,
    /// Found shut under this process: out for good.
    shut: Vec<bool>,
    /// In `place` now.
    armed: Vec<bool>,
    /// When this worker last moved to the back of the listeners' queues.
    moved_at: Instant,
}

/// The listeners of a worker and their place in an epoll.
pub struct Arming {
    listeners: Arc<Vec<Listener>>,
    state: Mutex<State>,
    /// The listeners are in the loop's epoll (read on each accept without the lock).
    in_loop: AtomicBool,
    /// Connections accepted since the last move to the back.
    taken: AtomicU32,
    /// `State::armed` as bits, read without the lock (a listener past the 64th counts
    /// as armed: an accept from it finds nothing, or what is there).
    armed_bits: AtomicU64,
}

impl Arming {
    /// The listeners as [`super::acceptor::epoll_for`] added them to `epoll`.
    pub fn new(epoll: Arc<OwnedFd>, listeners: Arc<Vec<Listener>>) -> Arc<Arming> {
        let n = listeners.len();
        Arc::new(Arming {
            listeners,
            state: Mutex::new(State {
                place: Place::Threads(epoll),
                admitted: true,
                watched: true,
                stopped: false,
                shut: vec![false; n],
                armed: vec![true; n],
                moved_at: Instant::now(),
            }),
            in_loop: AtomicBool::new(false),
            taken: AtomicU32::new(0),
            armed_bits: AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admission lets the worker accept, or not.
    pub fn admit(&self, on: bool) {
        let mut st = self.lock();
        st.admitted = on;
        self.apply(&mut st);
    }

    /// The event loop watches, or not (`--max-concurrency` reached, draining).
    pub fn watch(&self, on: bool) {
        let mut st = self.lock();
        st.watched = on && !st.stopped;
        self.apply(&mut st);
    }

    /// The worker stopped accepting (a stop, a reload, recycling): out of the loop's
    /// epoll for good, at once, from whichever thread learns it first.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        st.watched = false;
        self.apply(&mut st);
    }

    /// Listener `i` was found shut under this process: it leaves the epoll.
    pub fn shut(&self, i: usize) {
        let mut st = self.lock();
        if let Some(s) = st.shut.get_mut(i) {
            *s = true;
        }
        self.apply(&mut st);
    }

    /// Every listener of the worker.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Whether the listeners are in the event loop's epoll ([`Arming::move_to_loop`]).
    #[inline]
    pub fn in_loop(&self) -> bool {
        self.in_loop.load(Ordering::Relaxed)
    }

    /// The listeners that are watched now, in the order to look at them: from the one
    /// after the listener last accepted from.
    pub fn armed(&self) -> impl Iterator<Item = (usize, &Listener)> {
        let bits = self.armed_bits.load(Ordering::Acquire);
        let n = self.listeners.len();
        let first = super::listener::arm_first(n);
        (0..n)
            .map(move |k| (first + k) % n)
            .filter(move |&i| i >= 64 || bits & (1 << i) != 0)
            .map(|i| (i, &self.listeners[i]))
    }

    /// Moves the listeners into the event loop's epoll `loop_epoll`, exclusive, with
    /// `data` (the loop's mark, an fd it watches with its accept callback). The loop's
    /// epoll must
    /// outlive the listeners' place there: the loop takes them back out
    /// ([`Arming::watch`] off) before it ends. On failure (a kernel without
    /// `EPOLLEXCLUSIVE`) they stay where they were.
    pub fn move_to_loop(&self, loop_epoll: RawFd, data: RawFd) -> Result<(), Errno> {
        let mut st = self.lock();
        let threads = match &st.place {
            Place::Loop { .. } => return Ok(()),
            Place::Threads(ep) => Arc::clone(ep),
        };
        // SAFETY: the caller keeps `loop_epoll` open while the listeners are in it.
        let target = unsafe { BorrowedFd::borrow_raw(loop_epoll) };
        // The loop reads the event's data as `data.fd`, the union's first four bytes.
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&data.to_ne_bytes());
        let data = u64::from_ne_bytes(bytes);
        // Tried first with one listener, so that a refusal leaves everything as it was.
        let mut added: Vec<usize> = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !st.armed[i] {
                continue;
            }
            if let Err(e) = add(target, l, data, true) {
                for &j in &added {
                    let _ = epoll::delete(target, &self.listeners[j].sock);
                }
                return Err(e);
            }
            added.push(i);
        }
        for &i in &added {
            let _ = epoll::delete(&*threads, &self.listeners[i].sock);
        }
        st.place = Place::Loop {
            epoll: loop_epoll,
            data,
        };
        st.moved_at = Instant::now();
        self.in_loop.store(true, Ordering::Relaxed);
        self.apply(&mut st);
        Ok(())
    }

    /// A connection was accepted from listener `i`: in the loop's epoll, every
    /// [`MOVE_AFTER`] connections this worker moves to the back of `i`'s queue once it
    /// has held the front for [`MOVE_EVERY`].
    #[inline]
    pub fn accepted(&self, i: usize) {
        if !self.in_loop() {
            return;
        }
        let n = self.taken.fetch_add(1, Ordering::Relaxed) + 1;
        if n % MOVE_AFTER != 0 {
            return;
        }
        self.move_back(i);
    }

    #[cold]
    fn move_back(&self, i: usize) {
        let mut st = self.lock();
        let now = Instant::now();
        if now.duration_since(st.moved_at) < MOVE_EVERY {
            return;
        }
        st.moved_at = now;
        self.taken.store(0, Ordering::Relaxed);
        if let (Place::Loop { epoll: ep, data }, Some(true)) = (&st.place, st.armed.get(i)) {
            // SAFETY: see `move_to_loop`.
            let target = unsafe { BorrowedFd::borrow_raw(*ep) };
            let l = &self.listeners[i];
            let _ = epoll::delete(target, &l.sock);
            if let Err(e) = add(target, l, *data, true) {
                tracing::error!(listener = %l.label, error = %e, "cannot put the listener back in the event loop's epoll");
                st.armed[i] = false;
                if i < 64 {
                    self.armed_bits.fetch_and(!(1 << i), Ordering::Release);
                }
            }
        }
    }

    /// Puts each listener in or out of its place as the three conditions say, in the
    /// order of [`super::listener::arm_first`] (re-armed listeners that are ready are
    /// taken in that order).
    fn apply(&self, st: &mut State) {
        let n = self.listeners.len();
        let first = super::listener::arm_first(n);
        for i in (0..n).map(|k| (first + k) % n) {
            // The loop's stops matter only in its own epoll: in the threads' epoll,
            // which the loop watches, its `remove_reader` silences them all.
            let watched = st.watched || matches!(st.place, Place::Threads(_));
            let want = st.admitted && watched && !st.shut[i];
            if want == st.armed[i] {
                continue;
            }
            let l = &self.listeners[i];
            let done = match &st.place {
                Place::Threads(ep) => {
                    let data = Wake::Listener(i).encode();
                    if want {
                        add(ep.as_fd(), l, data, false)
                    } else {
                        epoll::delete(&**ep, &l.sock)
                    }
                }
                Place::Loop { epoll: ep, data } => {
                    // SAFETY: see `move_to_loop`.
                    let target = unsafe { BorrowedFd::borrow_raw(*ep) };
                    if want {
                        add(target, l, *data, true)
                    } else {
                        epoll::delete(target, &l.sock)
                    }
                }
            };
            match done {
                Ok(()) | Err(Errno::EXIST) | Err(Errno::NOENT) => {
                    st.armed[i] = want;
                    if i < 64 {
                        if want {
                            self.armed_bits.fetch_or(1 << i, Ordering::Release);
                        } else {
                            self.armed_bits.fetch_and(!(1 << i), Ordering::Release);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(listener = %l.label, error = %e, "cannot change the listener's place in the epoll")
                }
            }
        }
    }
}

fn add(ep: BorrowedFd<'_>, l: &Listener, data: u64, exclusive: bool) -> Result<(), Errno> {
    let flags = if exclusive {
        epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE
    } else {
        epoll::EventFlags::IN
    };
    epoll::add(ep, &l.sock, epoll::EventData::new_u64(data), flags)
}

/// What the tests of this module and of admission set up: one TCP listener on loopback,
/// and the threads' epoll holding it as [`super::acceptor::epoll_for`] adds it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn tcp_listener() -> (Arc<Vec<Listener>>, std::net::SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let listeners = Arc::new(vec![Listener {
            sock: socket2::Socket::from(l),
            tcp: true,
            label: Arc::from("test"),
            info: crate::wsgi::ListenerInfo {
                protocol: crate::codec::Protocol::Uwsgi,
                server_name: Arc::from(&b"test"[..]),
                server_port: Arc::from(&b"0"[..]),
            },
            inherited: false,
        }]);
        (listeners, addr)
    }

    pub fn threads_epoll(listeners: &[Listener]) -> Arc<OwnedFd> {
        let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        epoll::add(
            &*ep,
            &listeners[0].sock,
            epoll::EventData::new_u64(Wake::Listener(0).encode()),
            epoll::EventFlags::IN,
        )
        .unwrap();
        ep
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{tcp_listener as listener, threads_epoll};
    use super::*;
    use std::os::fd::AsRawFd;

    /// The flags `ep` watches `fd` with, from `/proc/self/fdinfo`; `None`: not watched.
    fn watched_with(ep: &OwnedFd, fd: RawFd) -> Option<u32> {
        let text =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.as_raw_fd())).unwrap();
        text.lines().find_map(|l| {
            let mut w = l.strip_prefix("tfd:")?.split_whitespace();
            (w.next()?.parse::<RawFd>().ok()? == fd).then_some(())?;
            (w.next()? == "events:").then_some(())?;
            u32::from_str_radix(w.next()?, 16).ok()
        })
    }

    /// The data `ep` reports `fd`'s events with.
    fn data_of(ep: &OwnedFd, fd: RawFd) -> Option<u64> {
        let text =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.as_raw_fd())).unwrap();
        text.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"tfd:") && w.get(1)?.parse::<RawFd>().ok()? == fd).then_some(())?;
            (w.get(4) == Some(&"data:")).then_some(())?;
            u64::from_str_radix(w.get(5)?, 16).ok()
        })
    }

    fn setup() -> (Arc<Arming>, Arc<OwnedFd>, OwnedFd, RawFd) {
        let (listeners, _) = listener();
        let threads = threads_epoll(&listeners);
        let lfd = listeners[0].sock.as_raw_fd();
        let arming = Arming::new(Arc::clone(&threads), listeners);
        let event_loop = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        (arming, threads, event_loop, lfd)
    }

    const EXCLUSIVE: u32 = 1 << 28;

    #[test]
    fn in_the_loop_s_epoll_the_listeners_are_exclusive_and_leave_the_threads_epoll() {
        let (arming, threads, event_loop, lfd) = setup();
        assert!(!arming.in_loop());
        arming
            .move_to_loop(event_loop.as_raw_fd(), threads.as_raw_fd())
            .unwrap();
        assert!(arming.in_loop());
        assert_eq!(watched_with(&threads, lfd), None);
        let flags = watched_with(&event_loop, lfd).expect("in the loop's epoll");
        assert_ne!(flags & EXCLUSIVE, 0, "exclusive: {flags:x}");
        // The event's data is the acceptor epoll's fd (what the loop watches).
        assert_eq!(data_of(&event_loop, lfd), Some(threads.as_raw_fd() as u64));
    }

    #[test]
    fn the_loop_s_pause_and_admission_and_a_shut_listener_each_take_it_out() {
        let (arming, threads, event_loop, lfd) = setup();
        // In the threads' epoll the loop's pause changes nothing (its remove_reader
        // of the whole epoll does it); admission does.
        arming.watch(false);
        assert!(watched_with(&threads, lfd).is_some());
        arming.admit(false);
        assert_eq!(watched_with(&threads, lfd), None);
        arming.admit(true);
        assert!(watched_with(&threads, lfd).is_some());
        arming.watch(true);
        arming
            .move_to_loop(event_loop.as_raw_fd(), threads.as_raw_fd())
            .unwrap();
        arming.watch(false);
        assert_eq!(watched_with(&event_loop, lfd), None, "the loop paused");
        arming.admit(false);
        arming.watch(true);
        assert_eq!(
            watched_with(&event_loop, lfd),
            None,
            "admission still says no"
        );
        arming.admit(true);
        assert!(watched_with(&event_loop, lfd).is_some());
        assert_eq!(arming.armed().count(), 1);
        arming.shut(0);
        assert_eq!(watched_with(&event_loop, lfd), None);
        arming.admit(false);
        arming.admit(true);
        assert_eq!(watched_with(&event_loop, lfd), None, "shut is for good");
        assert_eq!(arming.armed().count(), 0);
    }

    #[test]
    fn a_connection_wakes_one_of_two_loops_waiting() {
        // Two workers' loops, each a thread waiting on its own epoll that holds the
        // same listener: the one woken accepts, the other is not woken and finds
        // nothing when its wait ends.
        let (listeners, addr) = listener();
        let mut loops = Vec::new();
        for _ in 0..2 {
            let threads = threads_epoll(&listeners);
            let arming = Arming::new(Arc::clone(&threads), Arc::clone(&listeners));
            let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
            arming
                .move_to_loop(ep.as_raw_fd(), threads.as_raw_fd())
                .unwrap();
            loops.push((arming, threads, ep));
        }
        let started = Arc::new(std::sync::Barrier::new(3));
        let tids = Arc::new(Mutex::new(Vec::new()));
        let waits: Vec<_> = loops
            .iter()
            .map(|(_, _, ep)| {
                let ep = Arc::clone(ep);
                let l = listeners[0].sock.try_clone().unwrap();
                let started = Arc::clone(&started);
                let tids = Arc::clone(&tids);
                std::thread::spawn(move || {
                    let waiting = Arc::new(AtomicBool::new(false));
                    tids.lock().unwrap().push((
                        rustix::thread::gettid().as_raw_nonzero().get(),
                        Arc::clone(&waiting),
                    ));
                    started.wait();
                    waiting.store(true, Ordering::Release);
                    let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 1];
                    let limit = rustix::event::Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    let (ready, _) = epoll::wait(&*ep, &mut events, Some(&limit)).unwrap();
                    let got = ready.len();
                    if got == 1 {
                        // Woken: take the connection, as the loop's callback does.
                        let _ = l.accept();
                    }
                    got
                })
            })
            .collect();
        started.wait();
        // Both threads asleep in their wait before the connection comes (bounded):
        // past the barrier, a thread's next sleep is its epoll wait.
        for _ in 0..500 {
            let asleep = tids.lock().unwrap().iter().all(|&(t, ref waiting)| {
                waiting.load(Ordering::Acquire)
                    && std::fs::read_to_string(format!("/proc/self/task/{t}/stat")).is_ok_and(
                        |st| {
                            st.rsplit(')')
                                .next()
                                .is_some_and(|r| r.trim_start().starts_with('S'))
                        },
                    )
            });
            if asleep {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let got: usize = waits.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(got, 1, "one loop woken, and given the connection");
    }
}
