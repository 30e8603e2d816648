//! SIGPIPE on postern's own threads.
//!
//! postern ignores SIGPIPE: a write to a peer that has gone away fails with EPIPE and is
//! handled where it happens. An app may set it back to its default action (kill the
//! process) while it is imported, and postern ignores it again only once the import
//! has returned (`boot`), while native code may change it at any time. A thread that
//! never runs Python and never starts a process (the `--stats` endpoint, the log
//! writer, the I/O runtime's threads) blocks SIGPIPE for itself, so that none of its
//! writes, whatever the disposition, can end the process: the signal a write raises
//! on a blocked thread stays pending on that thread, where nothing delivers it (setting
//! SIG_IGN later discards it), and the write fails with EPIPE all the same. Python's
//! threads are left alone: a process an app starts inherits the signal mask of the
//! thread that started it, and a child with SIGPIPE blocked would not end when its
//! reader does (`yes | head`).

/// Blocks SIGPIPE for the calling thread (see the module's comment). libc, not
/// rustix: rustix has no sigprocmask outside its `runtime` module.
pub fn block_on_this_thread() {
    // SAFETY: a sigset built on the stack by sigemptyset/sigaddset, passed by pointer
    // to pthread_sigmask, which changes the calling thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_a_closed_peer_fails_with_epipe_on_a_blocking_thread_under_sig_dfl() {
        // The process's disposition is not touched: a thread with SIGPIPE blocked
        // raises it into its own pending set, which is what is checked.
        std::thread::spawn(|| {
            block_on_this_thread();
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            drop(b);
            let e = rustix::io::write(&a, b"x").unwrap_err();
            assert_eq!(e, rustix::io::Errno::PIPE);
            // SAFETY: reads the calling thread's pending set into a zeroed sigset.
            let pending = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut set);
                libc::sigismember(&set, libc::SIGPIPE) == 1
            };
            assert!(pending, "the write raised SIGPIPE, held by the mask");
        })
        .join()
        .unwrap();
    }
}
