//! Memory the master and its workers share: zeroed pages mapped before the first fork
//! ([`map_shared`]), and a lock in them ([`SharedLock`]).
//!
//! The lock: a process-shared, robust
//! `pthread_mutex_t` in an anonymous `MAP_SHARED` page mapped before the first fork, so
//! every process forked after it locks the same mutex.
//!
//! Robust: a process that dies holding it (a worker killed by `--timeout`, a segfault)
//! does not leave it held. The kernel marks it when the holder's thread ends, and the
//! next thread to lock it is told so (`EOWNERDEAD`), marks it consistent and goes on.
//! Uncontended, locking and unlocking are an atomic operation each, in user space; a
//! system call (`futex`) is made only to wait or to wake a waiter.
//!
//! What it is for: several processes writing to one pipe or socket (a container's
//! stdout, the journal's stream) must not mix their lines. A pipe keeps a write of up to
//! `PIPE_BUF` (4 KiB) whole, but a longer one, once the pipe is full, goes in as room
//! is made, and another process's write can land in the middle of it.

use std::io;
use std::ptr::NonNull;
use std::time::Duration;

/// `len` zeroed bytes (rounded up to pages) in an anonymous `MAP_SHARED` mapping at an
/// address the kernel picks: page-aligned, and the same memory in every process forked
/// after this call. Never unmapped by anyone but its owner.
pub fn map_shared(len: usize) -> io::Result<NonNull<std::ffi::c_void>> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a new anonymous shared mapping, placed by the kernel: no existing memory
    // is touched.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )
    }?;
    NonNull::new(base).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
}

pub struct SharedLock {
    mutex: NonNull<libc::pthread_mutex_t>,
}

// SAFETY: the mutex is made for use by several threads and processes at once; the
// pointer is to a mapping that lives as long as this value.
unsafe impl Send for SharedLock {}
// SAFETY: as above: every use goes through the pthread calls, which synchronise.
unsafe impl Sync for SharedLock {}

/// Held until dropped.
pub struct SharedGuard<'a>(&'a SharedLock);

impl Drop for SharedGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this thread holds the mutex (the guard is made only on a lock).
        unsafe { libc::pthread_mutex_unlock(self.0.mutex.as_ptr()) };
    }
}

impl SharedLock {
    /// Maps and initialises the mutex. Call it before forking the processes that share it.
    pub fn new() -> io::Result<SharedLock> {
        let mutex = map_shared(std::mem::size_of::<libc::pthread_mutex_t>())?
            .cast::<libc::pthread_mutex_t>();
        // SAFETY: the attribute is initialised before use and destroyed after; the mutex
        // is initialised once, in fresh memory no other thread sees yet.
        let r = unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            let a = attr.as_mut_ptr();
            let mut r = libc::pthread_mutexattr_init(a);
            if r == 0 {
                r = libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED);
                if r == 0 {
                    r = libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST);
                }
                if r == 0 {
                    r = libc::pthread_mutex_init(mutex.as_ptr(), a);
                }
                libc::pthread_mutexattr_destroy(a);
            }
            r
        };
        let lock = SharedLock { mutex };
        match r {
            0 => Ok(lock),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Waits for the lock as long as it takes. `None`: the mutex cannot be used any
    /// more (a holder died and the thread told so could not mark it consistent).
    pub fn lock(&self) -> Option<SharedGuard<'_>> {
        // SAFETY: an initialised process-shared mutex.
        let r = unsafe { libc::pthread_mutex_lock(self.mutex.as_ptr()) };
        self.locked(r)
    }

    /// Waits for the lock for `wait` at most. `None`: not had in time (or unusable).
    pub fn lock_within(&self, wait: Duration) -> Option<SharedGuard<'_>> {
        // The deadline is on CLOCK_REALTIME, as pthread_mutex_timedlock wants it.
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let nanos = now.tv_nsec as u64 + u64::from(wait.subsec_nanos());
        let deadline = libc::timespec {
            tv_sec: (now.tv_sec as u64 + wait.as_secs() + nanos / 1_000_000_000) as libc::time_t,
            tv_nsec: (nanos % 1_000_000_000) as _,
        };
        // SAFETY: an initialised process-shared mutex and a valid timespec.
        let r = unsafe { libc::pthread_mutex_timedlock(self.mutex.as_ptr(), &deadline) };
        self.locked(r)
    }

    fn locked(&self, r: i32) -> Option<SharedGuard<'_>> {
        match r {
            0 => Some(SharedGuard(self)),
            libc::EOWNERDEAD => {
                // The holder died inside its write: what it left half-written stays;
                // the lock is good again.
                // SAFETY: this thread holds the mutex (EOWNERDEAD hands it over).
                let ok = unsafe { libc::pthread_mutex_consistent(self.mutex.as_ptr()) } == 0;
                let guard = SharedGuard(self);
                ok.then_some(guard)
            }
            _ => None,
        }
    }
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        // The mapping only: other processes may still use the mutex in theirs.
        // SAFETY: the mapping made in `new`, of that length; no guard outlives `self`.
        let _ = unsafe {
            rustix::mm::munmap(
                self.mutex.as_ptr().cast(),
                std::mem::size_of::<libc::pthread_mutex_t>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_second_locker_waits_and_a_timed_one_gives_up() {
        let lock = SharedLock::new().unwrap();
        let held = lock.lock().unwrap();
        let t = Instant::now();
        assert!(std::thread::scope(|s| s
            .spawn(|| lock.lock_within(Duration::from_millis(50)).is_none())
            .join()
            .unwrap()));
        assert!(t.elapsed() >= Duration::from_millis(45));
        drop(held);
        assert!(lock.lock_within(Duration::from_millis(50)).is_some());
    }

    /// regression guard: a process killed while it holds the lock must not leave it
    /// held for everyone else (a worker killed by --timeout inside a log write).
    #[test]
    fn a_holder_that_dies_does_not_keep_the_lock() {
        let lock = SharedLock::new().unwrap();
        // SAFETY: the child only locks and exits at once, touching nothing else.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let g = lock.lock();
            std::mem::forget(g);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(lock.lock_within(Duration::from_secs(2)).is_some());
        // And it stays usable.
        assert!(lock.lock_within(Duration::from_secs(2)).is_some());
    }

    #[test]
    fn processes_forked_after_it_share_it() {
        let lock = SharedLock::new().unwrap();
        let held = lock.lock().unwrap();
        // SAFETY: the child only tries the lock and exits with the result.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let got = lock.lock_within(Duration::from_millis(50)).is_some();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(i32::from(got)) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child got a lock held here"
        );
        drop(held);
    }
}
