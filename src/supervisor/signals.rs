//! The master's signal plumbing: a mask of the signals it handles, blocked in the
//! master and read from a signalfd, and taken back in each child it forks.
//!
//! libc, not rustix: rustix has no signalfd, and its sigprocmask/sigaction exist only
//! in its `runtime` feature, which must not be mixed with libc's own runtime.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

/// The signals the master handles (see the table in the module doc of `supervisor`).
pub const HANDLED: [i32; 9] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGUSR1,
    // Not for anything the master does: its default action would kill the master
    // without a word (gunicorn's binary upgrade is `kill -USR2 MASTER`), so it is read
    // and answered with a warning. Workers take it back for their stack dumps.
    libc::SIGUSR2,
];

/// [`HANDLED`], and the signal that carries the master's stop now to its workers
/// (`crate::stop::stop_now`, a real-time one: its number is known only at run time).
/// The master reads it too, to ignore it with a warning: at its default action a stray
/// one (`kill -RTMIN+5`) killed the master, and the workers followed. A child takes
/// the whole set back (a worker's handler is in place by then).
pub fn handled() -> Vec<i32> {
    let mut all = HANDLED.to_vec();
    all.push(crate::stop::stop_now_signal());
    all
}

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn of(signals: &[i32]) -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for &s in signals {
                libc::sigaddset(set.as_mut_ptr(), s);
            }
            SigSet(set.assume_init())
        }
    }

    /// Every signal (SIGKILL and SIGSTOP cannot be blocked anyway).
    pub fn all() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset initialises the set.
        unsafe {
            libc::sigfillset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    /// Blocks these signals in the calling thread.
    pub fn block(&self) -> io::Result<()> {
        self.mask(libc::SIG_BLOCK)
    }

    /// Unblocks these signals in the calling thread.
    pub fn unblock(&self) -> io::Result<()> {
        self.mask(libc::SIG_UNBLOCK)
    }

    fn mask(&self, how: libc::c_int) -> io::Result<()> {
        // SAFETY: a valid set; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(how, &self.0, std::ptr::null_mut()) };
        match rc {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A non-blocking signalfd for a set of blocked signals.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(set: &SigSet) -> io::Result<SignalFd> {
        // SAFETY: a new descriptor (-1) for a valid set.
        let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The next pending signal's number, or None when none is pending. A SIGTTIN or
    /// SIGTTOU the terminal sent (si_code SI_KERNEL: a process of the group read it,
    /// or wrote to it under `stty tostop`, in the background) is skipped: it is no
    /// operator's request to add or remove a worker.
    // regression (review-small): each tty read of a backgrounded worker reached the
    // master as 'SIGTTIN: one worker more'.
    pub fn read(&self) -> Option<i32> {
        loop {
            let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            match rustix::io::read(&self.0, &mut buf) {
                // ssi_signo is the first field (u32), ssi_code the third (i32).
                Ok(n) if n == buf.len() => {
                    let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32;
                    let code = i32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
                    if crate::stop::from_terminal(signo, code) {
                        tracing::debug!(
                            signal = name(signo),
                            "from the terminal (a process of the group used it in the background): not a request to scale"
                        );
                        continue;
                    }
                    return Some(signo);
                }
                _ => return None,
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sets `signal` to be ignored (in a child the master has just forked, before any
/// other thread exists).
pub fn ignore(signal: i32) {
    // SAFETY: SIG_IGN for a valid signal number; no other thread is running.
    unsafe {
        libc::signal(signal, libc::SIG_IGN);
    }
}

/// Sets a handler that does nothing for `signal` (in a child the master has just
/// forked, before any other thread exists): unlike SIG_IGN, it does not pass on to
/// the programs the process execs, and a later handler (a worker's stack dump on
/// SIGUSR2) replaces it.
pub fn absorb(signal: i32) {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a valid signal number and a handler that touches nothing; the struct is
    // zeroed (empty mask, no flags but SA_RESTART) before use.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// The conventional name of a signal number (`SIGKILL`), for logs.
pub fn name(signal: i32) -> String {
    let known = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        s if s == crate::stop::stop_now_signal() => "SIGRTMIN+5",
        _ => return format!("signal {signal}"),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_like_the_c_constants() {
        assert_eq!(name(libc::SIGKILL), "SIGKILL");
        assert_eq!(name(libc::SIGABRT), "SIGABRT");
        assert_eq!(name(64), "signal 64");
    }
}
