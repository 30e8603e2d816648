//! The WSGI threads' scheduling policy (`--sched-batch`): Linux's `SCHED_BATCH` while
//! a thread waits for new work, or for the whole thread.
//!
//! `SCHED_BATCH` keeps the CPU share and the nice value; the only difference is that a
//! thread woken up does not preempt the thread running on that CPU (the kernel looks
//! at the woken thread's policy when it wakes: `check_preempt_wakeup_fair` returns
//! early for a policy other than `SCHED_NORMAL`); it runs when that task blocks, its
//! slice ends (a tick), or at once on an idle CPU. Why: behind a front server on a
//! busy CPU, nginx connects, then writes the request. The connect wakes a Python thread
//! waiting on the listener, which preempted nginx between the two calls, found nothing
//! to read yet and slept again until nginx, resumed, wrote: two wake-ups for one
//! request. Counted behind nginx, hello at 2 workers x 1 thread, `wrk -c16` (README
//! "Reading"): first reads finding nothing 0.11-0.15 per request, nearly all just
//! after preempting nginx, and 0.54-0.84 context switches per request; under
//! `SCHED_BATCH` 0.002 and 0.12-0.29.
//!
//! The same rule applies to every wake-up of a batch thread: an app that waits on I/O
//! inside a request (a database query) would wait, when every CPU is busy, up to a
//! scheduler tick (4 ms at HZ=250) longer for each wait to end (measured with 1 ms
//! sleeps in the app: 0.07 ms over each sleep -> 3.0 ms beside two CPU-bound
//! processes). Hence three modes, `off` the default:
//!
//! - [`SchedBatch::Always`]: the whole thread (started under `SCHED_BATCH`): for
//!   CPU-bound apps behind a front server on the same CPUs, the lowest CPU per request
//!   of the three with no latency cost in the same runs, at the cost of the app's own
//!   I/O waits when every CPU is busy.
//! - [`SchedBatch::Waits`]: a thread is `SCHED_BATCH` only while it blocks waiting for a
//!   connection or a request (the accept token, the epoll wait), and `SCHED_OTHER`
//!   again before it returns to Python: the app, its I/O waits and the threads and
//!   processes it starts keep the default policy. The switch is made only when the wait
//!   would block (a zero-timeout look at the epoll first), so a thread whose next
//!   request is ready makes no extra system call; a wait that blocks makes three (the
//!   look, and `sched_setscheduler` each way, about 2 us each on the 2-core VM this was
//!   measured on). Under load behind nginx it saves the wake-ups `always` saves (hello
//!   2x1, `wrk -c16`, two runs: 0.13-0.14 wake-ups per request against 0.51, server CPU
//!   0.68-0.79x uWSGI's against 0.81-1.03x), and the app's sleeps end as soon as with
//!   `off` (0.08 ms over each 1 ms sleep beside two CPU-bound processes; `always`
//!   1.4-2.5 ms). Not the default: its req/s and latency were no better than `off`'s
//!   (0.90-0.93x uWSGI's req/s against 0.93-1.22x, p99 1.35x uWSGI's in one run of
//!   two); at a low request rate beside CPU-bound processes (hello 2x1, `wrk -c2`, two
//!   busy loops) every wait blocks and the thread switched back to `SCHED_OTHER` is
//!   preempted far more often (0.26-0.41 preemptions per request against 0.01-0.02):
//!   0.54-0.68x the req/s of `off`, p50 0.67-1.07 against 0.15-0.30 ms; and one request
//!   at a time straight to the socket makes 6.51 system calls per request under strace
//!   instead of 5 (3 more for each wait that blocks; README "Reading").
//!
//! Left as it is when the thread runs under another policy than `SCHED_OTHER` (`chrt`),
//! or when the change is refused (a seccomp filter): only a cost, nothing depends on
//! it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// `--sched-batch`: when the WSGI threads run under `SCHED_BATCH`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedBatch {
    /// Never: the process's policy throughout.
    #[default]
    #[value(alias = "0", alias = "false", alias = "no")]
    Off,
    /// While a thread waits for a connection or a request, never while it serves.
    Waits,
    /// The whole thread, serving included (and what the app starts inherits it).
    #[value(alias = "1", alias = "true", alias = "yes", alias = "on")]
    Always,
}

// A TOML file may say `sched_batch = true` / `false` (the option was a switch).
impl<'de> Deserialize<'de> for SchedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Switch(bool),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Switch(true) => Ok(SchedBatch::Always),
            Repr::Switch(false) => Ok(SchedBatch::Off),
            Repr::Name(s) => <SchedBatch as clap::ValueEnum>::from_str(&s, true).map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown sched_batch mode {s:?} (off, waits, always)"
                ))
            }),
        }
    }
}

/// [`SchedBatch::Waits`] is on in this process (set before the WSGI threads start).
static WAITS: AtomicBool = AtomicBool::new(false);

/// Where the calling thread stands.
#[derive(Copy, Clone, PartialEq, Eq)]
enum State {
    /// Not looked at yet: the thread's first wait decides.
    Unknown,
    /// Never switched: mode off, another policy, or refused.
    Left,
    /// `SCHED_OTHER`, switched to `SCHED_BATCH` for waits that block.
    Other,
    /// `SCHED_BATCH` for the wait under way.
    Batch,
}

thread_local! {
    static STATE: Cell<State> = const { Cell::new(State::Unknown) };
}

fn set(policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: acts on the calling thread (0) with a valid `sched_param`. libc: rustix
    // has no scheduling-policy calls. SCHED_OTHER <-> SCHED_BATCH needs no privilege.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

fn current() -> i32 {
    // SAFETY: reads the calling thread's policy.
    unsafe { libc::sched_getscheduler(0) }
}

/// The calling thread's state, looked at on its first wait.
fn state() -> State {
    STATE.with(|s| {
        if s.get() == State::Unknown {
            s.set(
                if WAITS.load(Ordering::Relaxed) && current() == libc::SCHED_OTHER {
                    State::Other
                } else {
                    State::Left
                },
            );
        }
        s.get()
    })
}

/// True when the calling thread switches to `SCHED_BATCH` before a wait that blocks,
/// and is not switched yet: the caller first looks without waiting, and calls
/// [`waiting`] only when that found nothing.
#[inline]
pub fn before_wait() -> bool {
    state() == State::Other
}

/// The calling thread is about to block waiting for work: `SCHED_BATCH` until
/// [`serving`] (nothing when it is already, or never switches).
pub fn waiting() {
    if state() != State::Other {
        return;
    }
    let next = if set(libc::SCHED_BATCH) {
        State::Batch
    } else {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "this Python thread keeps its scheduling policy"
        );
        State::Left
    };
    STATE.with(|s| s.set(next));
}

/// The calling thread has work (or leaves): back to `SCHED_OTHER` if [`waiting`]
/// switched it. A system call only when it did.
#[inline]
pub fn serving() {
    STATE.with(|s| {
        if s.get() == State::Batch {
            // Refused is unlikely (the way there was allowed); stay switched then, and
            // never switch again.
            s.set(if set(libc::SCHED_OTHER) {
                State::Other
            } else {
                State::Left
            });
        }
    });
}

/// Runs `start` (which starts the WSGI threads) as `mode` says: under
/// [`SchedBatch::Always`] with the calling thread under `SCHED_BATCH`, so that the
/// threads it starts inherit that policy (Linux: a new thread takes its creator's),
/// the calling thread then getting `SCHED_OTHER` back; under [`SchedBatch::Waits`]
/// with the threads switching themselves around their waits.
///
/// [`SchedBatch::Always`] was the first form (opt-in since a review measured the cost
/// for apps that wait on I/O in a request, see the module doc). Left as it is when the
/// process was started under another policy (`chrt`), or when the change is refused.
pub fn batch_policy<T>(mode: SchedBatch, start: impl FnOnce() -> T) -> T {
    WAITS.store(mode == SchedBatch::Waits, Ordering::Relaxed);
    if mode != SchedBatch::Always {
        return start();
    }
    let batch = current() == libc::SCHED_OTHER && set(libc::SCHED_BATCH);
    if !batch {
        tracing::debug!("the Python threads keep this process's scheduling policy");
    }
    let started = start();
    if batch {
        set(libc::SCHED_OTHER);
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threads_started_get_sched_batch_and_the_caller_keeps_its_policy() {
        // A test thread of its own: the policy is per thread.
        std::thread::spawn(|| {
            if current() != libc::SCHED_OTHER {
                eprintln!("SKIPPED: the test runs under another scheduling policy");
                return;
            }
            let inner = batch_policy(SchedBatch::Always, || {
                std::thread::spawn(current).join().unwrap()
            });
            assert_eq!(inner, libc::SCHED_BATCH, "a thread started inside");
            assert_eq!(current(), libc::SCHED_OTHER, "the caller afterwards");
            assert_eq!(
                std::thread::spawn(current).join().unwrap(),
                libc::SCHED_OTHER
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_waiting_thread_is_batch_until_it_serves() {
        std::thread::spawn(|| {
            if current() != libc::SCHED_OTHER {
                eprintln!("SKIPPED: the test runs under another scheduling policy");
                return;
            }
            WAITS.store(true, Ordering::Relaxed);
            assert!(before_wait());
            waiting();
            assert_eq!(current(), libc::SCHED_BATCH, "while waiting");
            assert!(!before_wait(), "already switched");
            serving();
            assert_eq!(current(), libc::SCHED_OTHER, "serving");
            serving();
            assert_eq!(current(), libc::SCHED_OTHER, "serving twice");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_under_another_policy_is_left_alone() {
        std::thread::spawn(|| {
            if !set(libc::SCHED_IDLE) {
                eprintln!("SKIPPED: SCHED_IDLE refused");
                return;
            }
            WAITS.store(true, Ordering::Relaxed);
            assert!(!before_wait());
            waiting();
            serving();
            assert_eq!(current(), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_option_reads_old_switch_values() {
        use clap::ValueEnum;
        for (s, want) in [
            ("waits", SchedBatch::Waits),
            ("off", SchedBatch::Off),
            ("always", SchedBatch::Always),
            ("1", SchedBatch::Always),
            ("true", SchedBatch::Always),
            ("0", SchedBatch::Off),
            ("false", SchedBatch::Off),
        ] {
            assert_eq!(SchedBatch::from_str(s, true), Ok(want), "{s}");
        }
        let toml: BTreeMapHolder = toml::from_str("m = true").unwrap();
        assert_eq!(toml.m, SchedBatch::Always);
        let toml: BTreeMapHolder = toml::from_str("m = 'waits'").unwrap();
        assert_eq!(toml.m, SchedBatch::Waits);
    }

    #[derive(Deserialize)]
    struct BTreeMapHolder {
        m: SchedBatch,
    }
}
