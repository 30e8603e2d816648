//! The accept token: which of a process's Python threads waits on its epoll.
//!
//! Only the thread holding the token waits on the epoll (uWSGI's thunder-lock idea), so
//! a connection wakes exactly one thread. The holder lets the token go as soon as it
//! has taken a connection off the epoll, before reading and serving it, so that a
//! request that blocks (the app waiting on I/O with the GIL released, a slow upload)
//! does not stop the other connections from being taken by the other threads.
//!
//! Letting it go wakes nobody: a CPU-bound request ends long before another thread
//! could do anything useful (the GIL is taken), and the thread that served it takes
//! the token back itself, with no system call, and looks at the epoll again. Handing
//! the token to a sleeping thread at each request (a `Mutex` around the epoll, as
//! before) cost one wake-up of that thread per request, then a wait for the GIL the
//! first thread held, and the first thread's sleep on the mutex when it came back:
//! 2.1 wake-ups per request at 4 threads against 0.5 at one.
//!
//! What keeps a blocking request from stalling the process is the standby: one waiting
//! thread that takes the token once it has stayed let go, with nobody taking it back,
//! for [`STANDBY`]. And for a while after a request that lasted longer than that (an
//! app that waits on a database), the token is handed to a waiting thread at once, as
//! before: waiting [`STANDBY`] for each such request would only delay the others.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the token may stay let go (nobody waiting on the epoll) before the standby
/// takes it: the longest a connection waits when the thread that would take it is
/// blocked in a request.
pub const STANDBY: Duration = Duration::from_millis(2);

/// While the token is held, the standby looks every [`STANDBY`] (a let-go does not wake
/// it); once nothing has happened for this long (the holder waits on an idle epoll), it
/// sleeps until a let-go wakes it: an idle worker's threads do not wake.
const QUIET: Duration = Duration::from_millis(50);

/// After a request longer than [`STANDBY`] (or a take-over), this many let-gos hand the
/// token over at once: an app where even one request in ten waits on I/O is served as
/// with a hand-over at every request (waiting [`STANDBY`] at each of those cost a third
/// of the throughput), while a CPU-bound one, whose requests are seldom that long (a
/// preempted thread), hands over only just after one.
const EAGER_SPAN: u32 = 32;

thread_local! {
    /// When this thread last let the token go: the time until it takes it again is how
    /// long the request it went to serve took.
    static LET_GO: Cell<Option<Instant>> = const { Cell::new(None) };
    /// This thread's number, for [`State::last`] (0: none yet).
    static ME: Cell<u64> = const { Cell::new(0) };
}

/// This thread's number (from 1).
fn me() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    ME.with(|m| {
        if m.get() == 0 {
            m.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        m.get()
    })
}

/// Where the standby is (the one waiting thread that watches the time).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Standby {
    Vacant,
    /// Looks again by this time at the latest.
    Until(Instant),
    /// Sleeps until woken (the token has been held with nothing happening).
    Asleep,
}

struct State {
    /// A thread holds the token (waits on the epoll, or handles what it found there).
    held: bool,
    /// When the token was let go; `None` while held.
    free_since: Option<Instant>,
    /// The thread that let it go last ([`me`]).
    last: u64,
    /// Counts each let-go: the standby sees whether anything happened while it slept.
    epoch: u64,
    /// The server stops: nobody waits for the token any more.
    closed: bool,
    standby: Standby,
    /// The standby is to take the token now (a recent request was long).
    hand_off: bool,
    /// Threads waiting for the standby's place.
    others: usize,
    /// Let-gos left that hand the token over at once ([`EAGER_SPAN`]).
    eager: u32,
}

impl State {
    fn seize(&mut self) {
        self.held = true;
        self.free_since = None;
        self.hand_off = false;
    }

    fn count(&mut self, slow: bool) {
        if slow {
            self.eager = EAGER_SPAN;
        }
    }

    fn eager(&self) -> bool {
        self.eager > 0
    }
}

/// The accept token of one process (see the module doc).
pub struct Token {
    /// One thread takes it (`--threads 1`, the ASGI loop): nobody to stand by, so
    /// nothing is timed.
    solo: bool,
    state: Mutex<State>,
    /// The standby waits here.
    standby: Condvar,
    /// The other waiting threads wait here for the standby's place.
    others: Condvar,
}

/// The token, held: dropping it lets it go.
pub struct Held<'a>(&'a Token);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.let_go();
    }
}

impl Token {
    /// The token of a process whose `threads` threads take it.
    pub fn new(threads: usize) -> Token {
        Token {
            solo: threads <= 1,
            state: Mutex::new(State {
                held: false,
                free_since: None,
                last: 0,
                epoch: 0,
                closed: false,
                standby: Standby::Vacant,
                hand_off: false,
                others: 0,
                eager: 0,
            }),
            standby: Condvar::new(),
            others: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the token, waiting for it if another thread holds it; `None` once
    /// [`close`](Self::close)d. `back`: this thread comes back from serving a request
    /// (the time since it let the token go counts as that request's length).
    pub fn take(&self, back: bool) -> Option<Held<'_>> {
        let since = if back && !self.solo {
            LET_GO.take()
        } else {
            None
        };
        let mut st = self.lock();
        if let Some(t) = since {
            st.count(t.elapsed() > STANDBY);
        }
        if st.closed {
            return None;
        }
        if !st.held {
            // Free, let go by this thread: it comes back from its request and looks at
            // the epoll again before any sleeping thread is woken. Let go by another
            // thread, whose request is running: that one is most likely back first (a
            // CPU-bound request holds the GIL anyway). Taking it here would make two
            // threads serve by turns, each waiting for the GIL the other holds (a
            // wake-up per request); this thread waits as the others do, unless a recent
            // request was long.
            if st.last == me() || st.eager() || st.free_since.is_none() {
                st.seize();
                return Some(Held(self));
            }
        }
        loop {
            if st.closed {
                return None;
            }
            if st.standby == Standby::Vacant {
                return self.stand_by(st);
            }
            st.others += 1;
            st = self.others.wait(st).unwrap_or_else(|e| e.into_inner());
            st.others -= 1;
        }
    }

    /// The token if it is free, without waiting (the ASGI event loop's look).
    pub fn try_take(&self) -> Option<Held<'_>> {
        let mut st = self.lock();
        if st.closed || st.held {
            return None;
        }
        st.seize();
        Some(Held(self))
    }

    /// The standby's wait: takes the token once it has been let go for [`STANDBY`]
    /// with nobody taking it back, or at once when handed over.
    fn stand_by<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Option<Held<'a>> {
        let mut seen = st.epoch;
        let mut changed = Instant::now();
        loop {
            if st.closed {
                st.standby = Standby::Vacant;
                return None;
            }
            let now = Instant::now();
            if !st.held {
                let due = st.free_since.map_or(now, |t| t + STANDBY);
                if st.hand_off || now >= due {
                    if !st.hand_off && st.free_since.is_some() {
                        // Let go and not taken back: its request blocks, or runs long.
                        st.count(true);
                    }
                    st.standby = Standby::Vacant;
                    st.seize();
                    return Some(Held(self));
                }
                st.standby = Standby::Until(due);
                st = self
                    .standby
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            // Held: the holder waits on the epoll. Look again in time while requests
            // come (a let-go does not wake this thread), sleep while they do not.
            if st.epoch != seen {
                seen = st.epoch;
                changed = now;
            }
            if now.duration_since(changed) > QUIET {
                st.standby = Standby::Asleep;
                st = self.standby.wait(st).unwrap_or_else(|e| e.into_inner());
            } else {
                st.standby = Standby::Until(now + STANDBY);
                st = self
                    .standby
                    .wait_timeout(st, STANDBY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    fn let_go(&self) {
        if self.solo {
            self.lock().held = false;
            return;
        }
        let now = Instant::now();
        LET_GO.set(Some(now));
        let mut st = self.lock();
        st.held = false;
        st.free_since = Some(now);
        st.last = me();
        st.epoch = st.epoch.wrapping_add(1);
        if st.closed {
            return;
        }
        let eager = st.eager();
        st.eager = st.eager.saturating_sub(1);
        st.hand_off = eager;
        match st.standby {
            // The standby's place is free (its last holder took the token): a waiting
            // thread takes it, and with it the watch of the time.
            Standby::Vacant => {
                if st.others > 0 {
                    self.others.notify_one();
                }
            }
            // It looks in time by itself.
            Standby::Until(at) if !eager && at <= now + STANDBY => {}
            _ => self.standby.notify_one(),
        }
    }

    /// The server stops: every waiting thread returns, and nobody waits from now on.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        self.standby.notify_all();
        self.others.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    /// A bound against a hang, not a measure.
    const LONG: Duration = Duration::from_secs(20);

    #[test]
    fn a_thread_coming_back_takes_the_free_token_at_once() {
        let t = Token::new(4);
        drop(t.take(false).unwrap());
        let again = t.take(true);
        assert!(again.is_some());
        assert!(t.try_take().is_none(), "held by one thread at a time");
    }

    // What threads are for: the holder let the token go to serve a request that never
    // comes back (blocked); a waiting thread takes it on its own.
    #[test]
    fn a_waiting_thread_takes_the_token_a_blocked_request_let_go() {
        let t = Arc::new(Token::new(4));
        let held = t.take(false).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let h = t.take(false);
                tx.send(h.is_some()).unwrap();
                drop(h);
            })
        };
        drop(held); // to serve a request that blocks: never taken back
        assert_eq!(rx.recv_timeout(LONG), Ok(true));
        waiter.join().unwrap();
    }

    // Every other waiting thread gets there too, one after the other, while the
    // requests they take block in turn.
    #[test]
    fn every_waiting_thread_takes_it_in_turn_while_requests_block() {
        let t = Arc::new(Token::new(4));
        let held = t.take(false).unwrap();
        let got = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (t, got, tx) = (Arc::clone(&t), Arc::clone(&got), tx.clone());
                std::thread::spawn(move || {
                    // Taken, then let go to serve a request that blocks.
                    drop(t.take(false).unwrap());
                    got.fetch_add(1, Ordering::SeqCst);
                    tx.send(()).unwrap();
                })
            })
            .collect();
        drop(held);
        for _ in 0..3 {
            rx.recv_timeout(LONG).unwrap();
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(got.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_long_request_makes_the_next_hand_overs_immediate() {
        let t = Token::new(4);
        assert!(!t.lock().eager());
        drop(t.take(false));
        t.lock().count(true);
        for _ in 0..EAGER_SPAN {
            assert!(t.lock().eager());
            drop(t.take(true));
        }
        assert!(!t.lock().eager(), "short ones again");
    }

    #[test]
    fn a_handed_over_token_is_taken_by_the_standby() {
        let t = Arc::new(Token::new(4));
        t.lock().eager = EAGER_SPAN;
        let held = t.take(false).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let h = t.take(false);
                tx.send(h.is_some()).unwrap();
            })
        };
        // The waiter is the standby once it is there.
        while t.lock().standby == Standby::Vacant {
            std::thread::yield_now();
        }
        drop(held);
        assert_eq!(rx.recv_timeout(LONG), Ok(true));
        waiter.join().unwrap();
    }

    #[test]
    fn close_lets_every_waiting_thread_go() {
        let t = Arc::new(Token::new(4));
        let _held = t.take(false).unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || t.take(false).is_none())
            })
            .collect();
        while t.lock().others < 2 {
            std::thread::yield_now();
        }
        t.close();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        assert!(t.take(true).is_none());
    }
}
