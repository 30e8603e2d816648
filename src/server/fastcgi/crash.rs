//! A worker that crashes (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT: a C extension's
//! bug, a failed assertion) in the middle of a FastCGI request answers that request
//! before it dies: `502 Bad Gateway` with its END_REQUEST when the app had written
//! nothing yet, the mark of a cut response (see [`FcgiConn::mark_cut`]) when it had.
//!
//! Why: nginx sends a request again, on another of its cached connections and without
//! counting a try, when a cached (kept) connection fails before any of the response
//! came. A GET whose app crashes its worker was so sent to every kept connection in
//! turn, each on a live worker or a fresh replacement, and killed one worker each time
//! (probe 346: one GET killed 3 to 11 workers of 4, and the requests of other clients
//! on them). Answered, the request ends with the crashing worker, as over uwsgi.
//!
//! How: each Python thread notes the FastCGI response it serves in a thread-local slot
//! ([`serving`], cleared by [`done`] as the response ends; the event loop notes the
//! response of the task it steps, for the step, see `asgi::serve`), and the handler installed
//! here for those signals reads the slot of the thread that faulted. It only does what
//! is safe in a signal handler: atomic loads and compare-exchanges, a `try_lock` never
//! released (the process is ending), one `send` without waiting, a `shutdown` or a
//! `setsockopt`, `sigaction`, `pthread_sigmask` and `raise`; no allocation, no lock
//! waited for, no log line (the master logs the crash). Then the signal's previous
//! action is put back and the signal comes again under it (a fault re-runs its
//! instruction; a signal sent, such as `abort`'s, is raised again), so a core dump and
//! Rust's stack-overflow report happen as before (Python's `faulthandler`, enabled
//! after this is installed, runs first and then passes the signal on to it). A process
//! that answered dies, whatever the previous action does.
//!
//! Not covered: a process ended by SIGKILL (the OOM killer) or by `os._exit`, which
//! run no handler (nginx still sends a GET again then), and a crash on another thread
//! than the one serving the request (nothing there to answer).

use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, Ordering};
use std::sync::OnceLock;

/// What a crash answers: a response under way (the FastCGI sink's). Returns whether
/// it wrote or changed anything (then the process must die); only what a signal
/// handler may do.
pub(super) trait Answer {
    fn answer_crash(&self) -> bool;
}

thread_local! {
    /// The FastCGI response this thread serves (a sink boxed in its request, so its
    /// address holds until it drops), or null. One word, stored atomically: the
    /// handler may interrupt the store.
    static SERVING: AtomicPtr<()> = const { AtomicPtr::new(std::ptr::null_mut()) };
}

/// How the handler answers what [`SERVING`] points at (the one type that sets it).
static ANSWER: OnceLock<unsafe fn(*const ()) -> bool> = OnceLock::new();

/// # Safety
/// `p` points at a live `T`.
unsafe fn answer_as<T: Answer>(p: *const ()) -> bool {
    // SAFETY: the caller's.
    unsafe { &*p.cast::<T>() }.answer_crash()
}

/// This thread serves `sink` from now on (its app runs here).
pub(super) fn serving<T: Answer + 'static>(sink: &T) {
    ANSWER.get_or_init(|| answer_as::<T>);
    SERVING.with(|s| s.store((sink as *const T).cast_mut().cast(), Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
}

/// `sink`'s response has ended (or the sink goes): the slot no longer names it.
pub(super) fn done<T: Answer + 'static>(sink: &T) {
    let me = (sink as *const T).cast_mut().cast::<()>();
    SERVING.with(|s| {
        let _ = s.compare_exchange(
            me,
            std::ptr::null_mut(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    });
    compiler_fence(Ordering::SeqCst);
}

/// Whatever this thread served is no longer its to answer (the event loop's step
/// ended, or handed the response to another thread).
pub fn clear() {
    SERVING.with(|s| s.store(std::ptr::null_mut(), Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
}

/// The signals answered, and the actions they had before [`install`].
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// A copy of a `sigaction` (the struct is plain data).
#[derive(Clone, Copy)]
struct Action(libc::sigaction);

// SAFETY: plain data (a handler address, flags, a mask), read only.
unsafe impl Send for Action {}
unsafe impl Sync for Action {}

static PREVIOUS: OnceLock<[Option<Action>; 5]> = OnceLock::new();

/// Installs the handler in this process, once: at start, before Python and the app
/// (the master's `--preload` included) could put handlers of their own, which then
/// run first and chain to this one for faults they do not own (a JVM's, a runtime
/// that recovers from its own faults: under this handler it would have answered a
/// request the process then served on). The actions in place (Rust's stack-overflow
/// handler) run after it; `faulthandler` (`PYTHONFAULTHANDLER`) runs first, then this.
pub fn install() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut previous = [None; 5];
    for (slot, &sig) in previous.iter_mut().zip(&SIGNALS) {
        // SAFETY: sigaction(2) reading the current action into a zeroed struct.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 {
                *slot = Some(Action(old));
            }
        }
    }
    if PREVIOUS.set(previous).is_err() {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SIGABRT ignored (by whoever started postern) stays so (abort() still ends
        // the process); a fault ignored is not (the kernel forces its default action
        // anyway): the handler passes on only the signals sent.
        if previous[i]
            .is_none_or(|Action(a)| sig == libc::SIGABRT && a.sa_sigaction == libc::SIG_IGN)
        {
            continue;
        }
        // SAFETY: sigaction(2) with a handler of the SA_SIGINFO shape, on the thread's
        // alternate stack where it has one (a stack overflow), every signal blocked
        // while it runs; SA_RESETHAND: a fault in the handler itself ends the process
        // under the default action.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_fatal as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigfillset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// The handler: answers the faulting thread's FastCGI request, then lets the signal
/// act as it did before; once it answered, the process dies whatever that was.
extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let previous = PREVIOUS
        .get()
        .and_then(|p| SIGNALS.iter().position(|&s| s == sig).and_then(|i| p[i]));
    // SAFETY: `info` is the kernel's.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    // A fault comes again as its instruction runs again (si_code > 0); a signal sent
    // (kill, tgkill: `abort` raises SIGABRT so) does not, nor does a machine-check
    // SIGBUS the kernel sends ahead of any access (BUS_MCEERR_AO).
    const BUS_MCEERR_AO: libc::c_int = 5;
    let sent = code <= 0 || (sig == libc::SIGBUS && code == BUS_MCEERR_AO);
    let ignored = previous.is_some_and(|Action(a)| a.sa_sigaction == libc::SIG_IGN);
    let sink = SERVING.with(|s| s.swap(std::ptr::null_mut(), Ordering::Relaxed));
    // A child the app forked has a copy of the slot, not the connection (its fork hook
    // closed it): nothing of its parent's is its to answer. A signal sent that was
    // ignored before stays ignored: nothing answered.
    let answered = !(sink.is_null() || (sent && ignored) || crate::forked::is_app_child())
        && ANSWER.get().is_some_and(|answer| {
            // SAFETY: the slot names a sink alive until it clears it (`done`, on this
            // thread), and this thread was interrupted while it did not; `ANSWER` is
            // the function of the one type that sets it.
            unsafe { answer(sink) }
        });
    // SAFETY: sigaction(2), pthread_sigmask(3) and raise(3) are async-signal-safe.
    unsafe {
        match previous {
            Some(Action(old)) => libc::sigaction(sig, &old, std::ptr::null_mut()),
            None => default(sig),
        };
        // A fault returns and comes again under the previous action (which dies:
        // `install` runs before the app can put a handler of its own under this one).
        // A signal sent is sent again: pending until this returns, or, once a request
        // was answered, now, unblocked, and then under the default action if the
        // previous one returned (Rust's handler lets a SIGSEGV sent from elsewhere
        // go): a process whose request was answered must not serve on.
        if sent {
            if answered {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(sig);
                default(sig);
            }
            libc::raise(sig);
        }
    }
}

/// The default action back for `sig`.
///
/// # Safety
/// sigaction(2), async-signal-safe.
unsafe fn default(sig: libc::c_int) -> libc::c_int {
    // SAFETY: the caller's; a zeroed struct with SIG_DFL.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut())
    }
}

/// What a crash answers for a request whose app wrote nothing: what
/// [`crate::proto::response::plain_response`] writes for a 502 (a unit test checks).
pub(super) const CRASH_ANSWER: &[u8] =
    b"Status: 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\n\r\nBad Gateway\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_answer_is_the_usual_502() {
        let usual = crate::proto::response::plain_response(
            crate::proto::response::HeadStyle::Cgi,
            502,
            "Bad Gateway",
            "Bad Gateway\n",
        );
        assert_eq!(
            String::from_utf8_lossy(CRASH_ANSWER),
            String::from_utf8_lossy(&usual)
        );
    }
}
