//! A process the app forked that comes back into postern's request code.
//!
//! `os.fork()` in a request makes a child that is a copy of the worker with one thread,
//! the one that forked, holding the client's connection. A child that ends with
//! `os._exit()` or an `exec` is fine; one that returns from the app would go on as the
//! worker: send its own response into the connection its parent answers on (a second
//! response inside the client's body), then take connections from the shared listener
//! outside the master's knowledge (no --timeout, no reload: old code served on). So
//! every process marks itself at fork ([`install`]: `pthread_atfork`), a worker clears
//! the mark when it starts, and the request paths ([`guard`]: a relaxed load) end such
//! a child with one line in postern's log before it writes or accepts anything.

use std::sync::atomic::{AtomicBool, Ordering};

static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Registers the fork hook; once, before the process forks workers or serves.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the child handler only stores to an atomic (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// This process serves (a worker the master forked, right after its fork).
pub fn serving() {
    FORKED.store(false, Ordering::Relaxed);
}

/// Ends this process if it is a child the app forked, before it touches a connection.
#[inline]
pub fn guard() {
    if FORKED.load(Ordering::Relaxed) {
        end_forked_child();
    }
}

#[cold]
fn end_forked_child() -> ! {
    crate::logging::write_direct_error(
        "postern::forked",
        &format!(
            "a process the app forked (os.fork() in a request, pid {}) returned into postern instead of ending: it ends here, before it writes to the connection its parent answers on (it would have put a second response into that client's) or takes other connections; end such a child with os._exit() (or exec), or use subprocess or multiprocessing",
            std::process::id()
        ),
    );
    // SAFETY: ends the child at once, running nothing of the parent's (no atexit, no
    // destructors: their state belongs to the worker it was copied from).
    unsafe { libc::_exit(1) }
}
