//! A timer that wakes the I/O thread once when it is due: a timerfd in the runtime's
//! epoll. A tokio sleep more than 64 ms away wakes the thread at the start of its
//! timer-wheel slot, and of each lower level's, on its way to its deadline (two wake-ups
//! for 250 ms, three for 5 s): for the timers an idle worker keeps (its heartbeat, the
//! `--head-timeout` watch with nothing waiting), those were most of its wake-ups.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;

/// One timerfd, re-armed at each wait; a tokio sleep where it cannot be made (no
/// timerfd) or fails. Made on a runtime with its I/O driver (as every runtime of
/// postern's): tokio panics without one.
pub struct Timer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Timer {
    /// On the current runtime.
    pub fn new() -> Timer {
        let made = || -> std::io::Result<AsyncFd<OwnedFd>> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
            )?;
            // SAFETY: the AsyncFd owns the descriptor: it stays open and the same for
            // as long as the AsyncFd lives.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
        };
        Timer { fd: made().ok() }
    }

    /// Until `at` ([`RESOLUTION`] at the least when it has not passed); a deadline that
    /// has passed yields to the runtime once. Cancel-safe: the next wait re-arms it.
    /// regression: `--head-timeout 0.0000001` made the I/O thread's watch loop on
    /// deadlines that had passed without ever yielding: 100% CPU idle, and a SIGTERM
    /// never seen (tokio's sleeps, before this timer, round up to a millisecond).
    pub async fn sleep_until(&mut self, at: Instant) {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tokio::task::yield_now().await;
            return;
        }
        let left = left.max(RESOLUTION);
        let at = Instant::now() + left;
        if let Some(fd) = &self.fd {
            if Self::wait(fd, left).await.is_ok() {
                return;
            }
            self.fd = None;
        }
        tokio::time::sleep_until(at.into()).await;
    }

    /// For `d`, [`RESOLUTION`] at the least (zero: a yield).
    pub async fn sleep(&mut self, d: Duration) {
        let d = if d.is_zero() { d } else { d.max(RESOLUTION) };
        self.sleep_until(Instant::now() + d).await;
    }

    /// Arms the timer `left` from now and waits for it.
    async fn wait(fd: &AsyncFd<OwnedFd>, left: Duration) -> std::io::Result<()> {
        let value = Timespec::try_from(left).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // Re-arming clears an expiry nobody read (a wait cancelled when it was due).
        timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut ready = fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut expirations) {
                Ok(_) => {
                    // Read whole: nothing left until the next arming.
                    ready.clear_ready();
                    return Ok(());
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The shortest wait: a millisecond, as tokio's timer (shorter timeouts than that are
/// a configuration's mistake, and would wake the thread that many times a second).
pub const RESOLUTION: Duration = Duration::from_millis(1);

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn it_sleeps_at_least_as_long_as_asked_and_re_arms() {
        runtime().block_on(async {
            let mut t = Timer::new();
            assert!(t.fd.is_some(), "a timerfd on a runtime with its I/O driver");
            for ms in [30, 10, 0, 20] {
                let start = Instant::now();
                t.sleep(Duration::from_millis(ms)).await;
                assert!(start.elapsed() >= Duration::from_millis(ms), "{ms}");
            }
            // A wait cancelled when due: the next one still waits its whole time.
            let _ =
                tokio::time::timeout(Duration::from_millis(5), t.sleep(Duration::from_millis(5)))
                    .await;
            std::thread::sleep(Duration::from_millis(10));
            let start = Instant::now();
            t.sleep(Duration::from_millis(40)).await;
            assert!(start.elapsed() >= Duration::from_millis(40));
            // Shorter than a millisecond: a millisecond.
            let start = Instant::now();
            t.sleep(Duration::from_nanos(100)).await;
            assert!(start.elapsed() >= RESOLUTION);
        });
    }

    #[test]
    fn a_deadline_that_has_passed_yields_to_the_runtime() {
        runtime().block_on(async {
            let mut t = Timer::new();
            let mut passed = std::pin::pin!(t.sleep_until(Instant::now()));
            // Pending once (the other tasks and the I/O driver get their turn), then done.
            assert!(futures_poll_once(passed.as_mut()).await.is_none());
            passed.await;
        });
    }

    /// Polls `f` once: `Some` when it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
