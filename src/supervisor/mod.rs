//! The master process (`--workers N` with N > 1): binds nothing itself (main has bound
//! every listener before), never starts Python or a thread, and forks workers that
//! inherit the listeners. It reaps and replaces workers that die, reloads on SIGHUP
//! (new workers first, then the old ones drain), and stops gracefully on SIGTERM.
//!
//! Signals reach the master through a signalfd (they stay blocked in the master and
//! are unblocked in each child), so the master is one single-threaded poll loop and
//! forking is safe at any time.
//!
//! | signal | master does |
//! |---|---|
//! | SIGHUP | reload: start a new generation, then gracefully stop the old one |
//! | SIGTERM, SIGINT | graceful stop: workers drain (up to --graceful-timeout), then exit |
//! | SIGQUIT | immediate stop: SIGKILL to every worker |
//! | SIGTTIN / SIGTTOU | one worker more / less |
//! | SIGCHLD | reap; a worker that died unexpectedly is logged and replaced |

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Errors of the master.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up the master's signal handling: {0}")]
    Signals(nix::Error),
    #[error("cannot fork a worker: {0}")]
    Fork(nix::Error),
    #[error("the first workers failed to start (see the traceback above); not retrying")]
    BootFailed,
    #[error("workers keep dying right after they start ({0} times in a row); stopping")]
    CrashLoop(u32),
}

/// What the master needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub graceful_timeout: Duration,
}

/// A running worker as the master tracks it.
struct Worker {
    pid: Pid,
    generation: u64,
    /// Read end of the pipe the worker writes one byte to once it serves.
    ready_pipe: Option<OwnedFd>,
    ready: bool,
    started: Instant,
    /// Asked to stop (reload, scale down, shutdown): its exit is expected.
    retiring: bool,
}

/// The signals the master handles.
fn master_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Runs the master until a stop. `worker` runs in each forked child and returns the
/// child's exit code; it receives the write end of its ready pipe.
pub fn run(opts: Options, worker: impl Fn(OwnedFd) -> i32) -> Result<(), SupervisorError> {
    let mask = master_signals();
    mask.thread_block().map_err(SupervisorError::Signals)?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(SupervisorError::Signals)?;
    let mut m = Master {
        opts: opts.clone(),
        target: opts.workers,
        generation: 0,
        workers: Vec::new(),
        boot_failures: 0,
        announced: false,
    };
    tracing::info!(
        master = std::process::id(),
        workers = opts.workers,
        "master started; starting workers"
    );
    for _ in 0..m.target {
        m.spawn(&sfd, &mask, &worker)?;
    }
    loop {
        // Wait for a signal or a ready byte, at most 200 ms (timers, respawn backoff).
        let mut fds = vec![nix::poll::PollFd::new(
            sfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let pipes: Vec<(usize, i32)> = m
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.ready_pipe.as_ref().map(|p| (i, p.as_raw_fd())))
            .collect();
        // SAFETY: the fds are owned by `m.workers` and outlive this poll call.
        let borrowed: Vec<_> = pipes
            .iter()
            .map(|(_, fd)| unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) })
            .collect();
        for b in &borrowed {
            fds.push(nix::poll::PollFd::new(*b, nix::poll::PollFlags::POLLIN));
        }
        let _ = nix::poll::poll(&mut fds, 200u16);
        let ready_pipes: Vec<usize> = fds[1..]
            .iter()
            .zip(&pipes)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, (i, _))| *i)
            .collect();
        drop(fds);
        for i in ready_pipes {
            m.check_ready(i);
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            match sig {
                Some(Signal::SIGHUP) => m.reload(&sfd, &mask, &worker)?,
                Some(Signal::SIGTERM) | Some(Signal::SIGINT) => {
                    tracing::info!(signal = ?sig.unwrap(), "stopping: workers finish their requests (--graceful-timeout {:?})", m.opts.graceful_timeout);
                    return m.stop(&sfd, false);
                }
                Some(Signal::SIGQUIT) => {
                    tracing::info!("SIGQUIT: stopping now");
                    return m.stop(&sfd, true);
                }
                Some(Signal::SIGTTIN) => {
                    m.target += 1;
                    tracing::info!(workers = m.target, "SIGTTIN: one worker more");
                }
                Some(Signal::SIGTTOU) => {
                    if m.target > 1 {
                        m.target -= 1;
                        tracing::info!(workers = m.target, "SIGTTOU: one worker less");
                        m.retire_extra();
                    }
                }
                _ => {}
            }
        }
        m.reap()?;
        m.fill(&sfd, &mask, &worker)?;
    }
}

struct Master {
    opts: Options,
    target: usize,
    generation: u64,
    workers: Vec<Worker>,
    /// Workers of the current generation that died before they were ready, in a row.
    boot_failures: u32,
    announced: bool,
}

impl Master {
    fn spawn(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(OwnedFd) -> i32,
    ) -> Result<(), SupervisorError> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SupervisorError::Fork)?;
        let master_pid = nix::unistd::getpid();
        // SAFETY: the master is single-threaded (no runtime, no Python, no helper
        // thread has been started), so the child may run arbitrary code.
        match unsafe { fork() }.map_err(SupervisorError::Fork)? {
            ForkResult::Child => {
                // A worker never outlives its master (killed with SIGKILL, say).
                // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                }
                if nix::unistd::getppid() != master_pid {
                    std::process::exit(0);
                }
                // The child: its own signal handling, none of the master's fds.
                let _ = mask.thread_unblock();
                let _ = nix::unistd::close(sfd.as_fd().as_raw_fd());
                drop(read);
                for w in self.workers.drain(..) {
                    drop(w.ready_pipe);
                }
                let code = worker(write);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                tracing::info!(
                    pid = child.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                self.workers.push(Worker {
                    pid: child,
                    generation: self.generation,
                    ready_pipe: Some(read),
                    ready: false,
                    started: Instant::now(),
                    retiring: false,
                });
                Ok(())
            }
        }
    }

    /// A ready pipe is readable: a byte means ready, EOF means it died first.
    fn check_ready(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let Some(p) = &w.ready_pipe else { return };
        let mut b = [0u8; 1];
        match nix::unistd::read(p, &mut b) {
            Ok(1) => {
                w.ready = true;
                tracing::info!(
                    pid = w.pid.as_raw(),
                    boot_ms = w.started.elapsed().as_millis() as u64,
                    "worker ready"
                );
            }
            _ => {}
        }
        w.ready_pipe = None;
        if w.ready && w.generation == self.generation {
            self.boot_failures = 0;
        }
        // Once the whole new generation serves, the old one drains and exits.
        let current: Vec<(i32, bool)> = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && !w.retiring)
            .map(|w| (w.pid.as_raw(), w.ready))
            .collect();
        if current.len() >= self.target && current.iter().all(|(_, ready)| *ready) {
            let mut retired = 0;
            for w in self.workers.iter_mut() {
                if w.generation < self.generation && !w.retiring {
                    w.retiring = true;
                    let _ = kill(w.pid, Signal::SIGTERM);
                    retired += 1;
                }
            }
            if retired > 0 {
                tracing::info!(
                    old = retired,
                    "new workers ready; old workers finish their requests and exit"
                );
            }
            if !self.announced || retired > 0 {
                let pids: Vec<i32> = current.iter().map(|(pid, _)| *pid).collect();
                tracing::info!(?pids, "all {} workers ready", pids.len());
                self.announced = true;
            }
        }
    }

    fn reload(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(OwnedFd) -> i32,
    ) -> Result<(), SupervisorError> {
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            "SIGHUP: reloading (new workers start, then the old ones drain)"
        );
        self.boot_failures = 0;
        for _ in 0..self.target {
            self.spawn(sfd, mask, worker)?;
        }
        Ok(())
    }

    fn retire_extra(&mut self) {
        let live = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && !w.retiring)
            .count();
        if live > self.target {
            if let Some(w) = self
                .workers
                .iter_mut()
                .rev()
                .find(|w| w.generation == self.generation && !w.retiring)
            {
                w.retiring = true;
                let _ = kill(w.pid, Signal::SIGTERM);
            }
        }
    }

    /// Collects exited workers; logs the unexpected ones.
    fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}")),
                WaitStatus::Signaled(pid, sig, core) => (
                    pid,
                    format!(
                        "killed by {sig:?}{}",
                        if core { " (core dumped)" } else { "" }
                    ),
                ),
                _ => continue,
            };
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let w = self.workers.remove(i);
            if w.retiring {
                tracing::info!(pid = pid.as_raw(), %how, "worker exited");
                continue;
            }
            if !w.ready {
                self.boot_failures += 1;
                if w.generation == 0 && !self.announced {
                    tracing::error!(pid = pid.as_raw(), %how, "worker failed to start");
                    self.stop_all(true);
                    return Err(SupervisorError::BootFailed);
                }
                if w.generation < self.generation {
                    continue;
                }
                if self.generation > 0
                    && self
                        .workers
                        .iter()
                        .any(|o| o.generation < self.generation && !o.retiring)
                {
                    // A reload whose new code does not start: keep serving the old one.
                    tracing::error!(pid = pid.as_raw(), %how, "reload failed: the new workers do not start; still serving the previous code");
                    self.generation -= 1;
                    for o in self.workers.iter_mut() {
                        if o.generation > self.generation {
                            o.retiring = true;
                            let _ = kill(o.pid, Signal::SIGTERM);
                        }
                    }
                    continue;
                }
                if self.boot_failures >= 10 {
                    self.stop_all(false);
                    return Err(SupervisorError::CrashLoop(self.boot_failures));
                }
            }
            tracing::error!(pid = pid.as_raw(), %how, "worker died unexpectedly; replacing it");
        }
    }

    /// Starts workers until the current generation has `target` of them (with a
    /// backoff after failures at boot).
    fn fill(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(OwnedFd) -> i32,
    ) -> Result<(), SupervisorError> {
        let live = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && !w.retiring)
            .count();
        if live >= self.target {
            return Ok(());
        }
        if self.boot_failures > 0 {
            let backoff = Duration::from_millis(100u64 << self.boot_failures.min(7));
            let last = self.workers.iter().map(|w| w.started).max();
            if last.is_some_and(|t| t.elapsed() < backoff) {
                return Ok(());
            }
            std::thread::sleep(backoff.min(Duration::from_millis(200)));
        }
        for _ in live..self.target {
            self.spawn(sfd, mask, worker)?;
        }
        Ok(())
    }

    fn stop_all(&mut self, now: bool) {
        for w in &mut self.workers {
            w.retiring = true;
            let _ = kill(
                w.pid,
                if now {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
        }
    }

    /// Stops every worker (gracefully unless `now`) and waits for them.
    fn stop(&mut self, sfd: &SignalFd, now: bool) -> Result<(), SupervisorError> {
        self.stop_all(now);
        let deadline = Instant::now() + self.opts.graceful_timeout + Duration::from_secs(1);
        while !self.workers.is_empty() {
            if Instant::now() > deadline {
                tracing::warn!(
                    left = self.workers.len(),
                    "workers still running after --graceful-timeout; killing them"
                );
                self.stop_all(true);
            }
            let _ = self.reap();
            // A second TERM/INT while draining: stop now.
            while let Ok(Some(info)) = sfd.read_signal() {
                let s = info.ssi_signo as i32;
                if s == Signal::SIGTERM as i32
                    || s == Signal::SIGINT as i32
                    || s == Signal::SIGQUIT as i32
                {
                    tracing::warn!("second signal: killing the workers now");
                    self.stop_all(true);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!("all workers exited");
        Ok(())
    }
}

/// Tells the master this worker serves (one byte on its ready pipe).
pub fn announce_ready(pipe: OwnedFd) {
    let _ = nix::unistd::write(&pipe, b"R");
}
