//! What asks this process to stop serving, and how the server waits for it: a SIGTERM
//! (for a single process also SIGINT), or a worker's own decision to recycle
//! (`--max-requests`, `--max-rss`). One handler of postern's own, in place from a
//! worker's fork (a single process: from the server's start), counts each signal and
//! wakes the server through a pipe; the server reads the counts. So a request to stop is never lost, whenever it comes: while a worker
//! imports its app (it is acted on once the server runs: a worker stopped while it
//! boots still serves the listen queue of a stopping server), while the server sets
//! up, or during the stop itself (a signal after the first stop began: stop at once;
//! several before it, as a worker dropped while it boots may get, are one).
//!
//! regression: a worker had a boot-time handler that tokio's replaced when the server
//! started, and a worker recycling itself sent itself a SIGTERM. A signal that fell
//! between the two handlers, or that tokio received before its stream listened, was
//! lost: the worker never stopped, and the master waited for it until killed
//! (cli.rs socket_files_outlive_recycled_workers_and_go_with_the_server, 1 run in 100
//! under load).
//!
//! The handler is postern's own (sigaction), not a registry's: `signal.signal` for
//! SIGTERM is refused during the app's import (crate::wsgi::interpreter), and the
//! handler is put back once the app is imported in case one was set another way (a C
//! extension), which would leave the worker deaf to the master. libc, not
//! rustix: rustix's sigaction exists only in its `runtime` feature.
//!
//! Leaf module: it imports nothing of the server or the supervisor, which both use it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// SIGTERMs received since [`install`] (the low half), and of them the ones a worker
/// received from its master while the master was alive (the high half: see
/// [`from_master`]). One word, counted by one add in the handler, so that a reader
/// sees a SIGTERM and its sender together ([`Terms::now`]).
/// regression: two atomics read one after the other: a master's SIGTERM that came
/// between the two reads of [`Waiter::first`] was counted in the first stop and held
/// as the master's too, so an operator's second `kill -TERM` to the worker did not
/// stop it at once.
static TERMS: AtomicU64 = AtomicU64::new(0);
/// SIGINTs received since [`install`] (a stop for a single process only: a worker
/// ignores SIGINT, the master turns a terminal's Ctrl-C into one stop).
static INTS: AtomicU32 = AtomicU32::new(0);
/// SIGQUITs received since [`install`]: a single process stops at once, as the
/// master does (it kills its workers); a worker ignores it (a terminal's Ctrl-\\
/// reaches the whole process group, and the master kills the workers). Before, a
/// single process had SIGQUIT's default action: it dumped core.
static QUITS: AtomicU32 = AtomicU32::new(0);
/// The master's "stop now" to this worker ([`StopNow::code`]; 0: none): the signal it
/// queued ([`stop_now`]) at a second signal, its own SIGQUIT, the stop's deadline or
/// a `--timeout` kill.
/// The worker then cuts its responses and marks them as a single process does, and
/// the master kills it only if it is still there a moment later.
static MASTER_QUIT: AtomicU32 = AtomicU32::new(0);
/// SIGHUPs received since [`install`] (ignored: a single process has no reload
/// without the master and logs it; a worker leaves reloads to the master).
static HUPS: AtomicU32 = AtomicU32::new(0);
/// SIGTTINs, SIGTTOUs and SIGUSR2s received since [`install`], ignored as SIGHUP is
/// (a single process has no workers to add or remove, nor a binary upgrade; a worker
/// leaves SIGTTIN/SIGTTOU to the master). Counted only so that none reaches its
/// default action: SIGTTIN and SIGTTOU stopped the process (a single process then
/// served nothing, a worker held its requests), SIGUSR2 killed a single process.
static TTINS: AtomicU32 = AtomicU32::new(0);
static TTOUS: AtomicU32 = AtomicU32::new(0);
static USR2S: AtomicU32 = AtomicU32::new(0);
/// SIGUSR1s whose log reopening a single process has to say ([`logs_reopened`]).
static REOPENS: AtomicU32 = AtomicU32::new(0);
/// The worker decided to recycle itself ([`recycle`]).
static RECYCLE: AtomicBool = AtomicBool::new(false);
/// The master had marked the worker to leave before it served ([`asked`]).
static ASKED: AtomicBool = AtomicBool::new(false);
/// The server is stopping and its listeners were shut down under this process, whose
/// own stop never came ([`listeners_shut`]).
static SHUT: AtomicBool = AtomicBool::new(false);
/// This worker's master is gone, and no SIGTERM stopped the worker ([`master_gone`]).
static ORPHAN: AtomicBool = AtomicBool::new(false);
/// The parent this process had at [`install`] (a worker: its master), for
/// [`MASTER_DEATH`]'s handler.
static PARENT: AtomicI32 = AtomicI32::new(0);
/// A single process: the write end of the pipe of the thread that ends the process on
/// a SIGQUIT the server cannot take ([`on_quit_now`]); -1: none (the handler then ends
/// the process by SIGTERM's default action). The same thread logs the first SIGTERM or
/// SIGINT that comes before the server serves ([`NOTICE_TERM`], [`NOTICE_INT`]).
static QUIT_NOW: AtomicI32 = AtomicI32::new(-1);
/// A single process: the app's import is over ([`imported`]); what is left before it
/// serves is the ASGI lifespan startup, for [`on_quit_now`]'s messages.
static IMPORTED: AtomicBool = AtomicBool::new(false);
/// The ASGI app answered its lifespan startup in time ([`lifespan_answered`]).
static ANSWERED: AtomicBool = AtomicBool::new(false);
/// Bytes on [`QUIT_NOW`]'s pipe: a SIGQUIT to end the process ([`QUIT_IMPORTING`]: the
/// app still importing; [`QUIT_UNDER_WAY`]: a stop under way), or the first SIGTERM /
/// SIGINT before the server serves, only to be logged.
const QUIT_IMPORTING: u8 = b'0';
const QUIT_UNDER_WAY: u8 = b'1';
const NOTICE_TERM: u8 = b'T';
const NOTICE_INT: u8 = b'I';
/// How often [`on_quit_now`]'s thread says that the app is still starting.
const STILL_STARTING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// The SIGTERMs a worker received from its master while the master was alive
/// ([`master_alive`] and the sender's pid, both asked in the handler), as counted in
/// the high half of [`TERMS`]: none of them is a second signal ([`Waiter::second`]),
/// since the master escalates itself (its own second signal kills the workers, and so
/// does --graceful-timeout). A SIGTERM from
/// anyone else (a second `kill -TERM` to the worker, a second group-wide one that a
/// busy master merged into one) still stops the worker at once.
/// regression (review of 0dd3827): every SIGTERM while the master lived was held, so a
/// deliberate second one sent to a worker, or to the group while the master was busy,
/// waited for --graceful-timeout. A group-wide SIGTERM (`timeout`, systemd's
/// KillMode=control-group, supervisord's stopasgroup) reaches each worker and then the
/// master, which forwards its own: a busy master's came more than
/// [`SAME_SIGNAL_AGAIN`] after the group's.
/// regression: the worker then said "second signal: stopping now", cut its requests
/// off, and postern exited 1.
const fn from_master(terms: u64) -> u32 {
    (terms >> 32) as u32
}

/// [`TERMS`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Terms {
    /// Every SIGTERM counted.
    all: u32,
    /// Of them, the master's while it lived.
    from_master: u32,
}

impl Terms {
    /// What the handler adds for one SIGTERM (`master`: its live master sent it).
    const fn one(master: bool) -> u64 {
        1 | if master { 1 << 32 } else { 0 }
    }

    const fn of(word: u64) -> Terms {
        Terms {
            all: word as u32,
            from_master: from_master(word),
        }
    }

    fn now() -> Terms {
        Terms::of(TERMS.load(Ordering::SeqCst))
    }
}

/// The write end of the wake-up pipe, for the handler (-1 before [`install`]).
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// A single process (no master): SIGINT stops it as SIGTERM does, and SIGHUP is logged.
/// A worker ignores both (the master turns a terminal's Ctrl-C into one stop, and
/// reloads on SIGHUP); they are counted only so that neither reaches its default
/// action (a SIGHUP to the process group would kill every worker mid-request).
static SINGLE: AtomicBool = AtomicBool::new(false);
/// The server waits for stops ([`Waiter::serving`]). Before, a second stop signal to a
/// single process (still importing the app, say) does what it would do without
/// postern: the process dies at once.
static SERVING: AtomicBool = AtomicBool::new(false);
/// The process the handler counts for: a child the app forks without exec
/// (`multiprocessing`, `os.fork`) inherits the handler but has no server to act on it.
static OWNER: AtomicI32 = AtomicI32::new(0);
/// When the first stop was taken ([`Waiter::first`]): what a worker's deadline after
/// its master's death counts from ([`began`]).
static BEGAN: OnceLock<std::time::Instant> = OnceLock::new();
/// The wake-up pipe (read end, write end), made once per process.
static PIPE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();

/// The signal that carries the master's stop now ([`stop_now`]): a real-time one, which
/// queues (a second SIGQUIT pending is dropped: a terminal's Ctrl-\ to the whole group
/// still pending in the worker swallowed the master's) and which no terminal sends.
/// Set at [`install`]: SIGRTMIN is the C library's to say.
static STOP_NOW_SIGNAL: AtomicI32 = AtomicI32::new(-1);

/// [`STOP_NOW_SIGNAL`]'s number.
pub fn stop_now_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

/// `si_code` of a signal sent with sigqueue(3) (rt_sigqueueinfo), which carries a value.
const SI_QUEUE: i32 = -1;

/// `si_code` of a signal the kernel sent itself (a terminal's SIGTTIN/SIGTTOU to a
/// background process group), where an operator's kill(2) has SI_USER.
const SI_KERNEL: i32 = 0x80;

/// A SIGTTIN or SIGTTOU the terminal sent ([`SI_KERNEL`]), not an operator's.
pub fn from_terminal(signal: i32, code: i32) -> bool {
    matches!(signal, libc::SIGTTIN | libc::SIGTTOU) && code == SI_KERNEL
}

/// The handler: counts the signal and writes one byte on the wake-up pipe. Only
/// async-signal-safe work (atomics, write(2)); errno is kept for the code it
/// interrupted. A full pipe already wakes the reader, so a failed write loses nothing.
extern "C" fn on_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // The sender (SA_SIGINFO): a worker tells its master's forwarded SIGTERM from
    // another sender's ([`Terms::from_master`]).
    // SAFETY: the kernel passes a valid siginfo_t for a handler installed with
    // SA_SIGINFO; reading si_pid is a plain load.
    let sender = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_pid() }
    };
    // SAFETY: getpid, signal and raise are async-signal-safe.
    unsafe {
        if libc::getpid() != OWNER.load(Ordering::SeqCst) {
            // A child the app forked: the signal does what it would do without
            // postern (the default action: terminate), as `Process.terminate()` expects.
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
            return;
        }
    }
    if signal == MASTER_DEATH {
        // SAFETY: getppid is async-signal-safe.
        if !SINGLE.load(Ordering::SeqCst)
            && unsafe { libc::getppid() } != PARENT.load(Ordering::SeqCst)
        {
            ORPHAN.store(true, Ordering::SeqCst);
            wake();
        }
        return;
    }
    // SAFETY: as for si_pid above.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    if from_terminal(signal, code) {
        // The terminal's (a read, or a write under `stty tostop`, from the
        // background): stopped, as the default action does ('Stopped (tty input)';
        // `fg` continues it, and the call is tried again). SIGSTOP is
        // async-signal-safe to raise.
        // regression (review-small): counted instead, the call restarted, the kernel
        // signalled again: a busy loop of thousands of failed reads a second.
        // SAFETY: raise is async-signal-safe.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
        return;
    }
    if signal == STOP_NOW_SIGNAL.load(Ordering::Relaxed) {
        // Only the live master's, queued with its reason ([`stop_now`]); anyone
        // else's is ignored.
        // SAFETY: as for si_pid above; si_value is a plain load of the union the
        // kernel filled for SI_QUEUE.
        let why = if code == SI_QUEUE && !info.is_null() {
            unsafe { (*info).si_value().sival_ptr as usize as u32 }
        } else {
            0
        };
        if why != 0 && master_alive() && sender == PARENT.load(Ordering::SeqCst) {
            MASTER_QUIT.store(why, Ordering::SeqCst);
            wake();
        }
        return;
    }
    let ignored = match signal {
        libc::SIGTTIN => Some(&TTINS),
        libc::SIGTTOU => Some(&TTOUS),
        libc::SIGUSR2 => Some(&USR2S),
        _ => None,
    };
    if let Some(count) = ignored {
        // Only said by the server ([`Waiter::first`]).
        count.fetch_add(1, Ordering::SeqCst);
        wake();
        return;
    }
    let count = match signal {
        libc::SIGTERM => None,
        libc::SIGINT => Some(&INTS),
        libc::SIGHUP => Some(&HUPS),
        libc::SIGQUIT => {
            let n = QUITS.fetch_add(1, Ordering::SeqCst) + 1;
            if SINGLE.load(Ordering::SeqCst) {
                let stopping = n >= 2 || Terms::now().all + INTS.load(Ordering::SeqCst) > 0;
                if stopping || !SERVING.load(Ordering::SeqCst) {
                    // Before the server waits for stops (the app still importing),
                    // or during a stop already under way (a second SIGQUIT, or one
                    // after SIGTERM/SIGINT, held up by the app's atexit or teardown):
                    // end now, as the master's SIGKILL ends a worker. By the thread
                    // of `on_quit_now`, which removes the socket files as the
                    // master does; only when there is none, or it
                    // has not ended the process by a third SIGQUIT, here, by SIGTERM's
                    // default action, not SIGQUIT's: no core file.
                    // (Unblocked first: an app may block SIGTERM in the thread that
                    // runs its import.)
                    // regression: always here, leaving the Unix socket files behind.
                    let fd = QUIT_NOW.load(Ordering::SeqCst);
                    if fd >= 0 && n < 3 {
                        // A stop under way: SIGTERM/SIGINT's, or a SIGQUIT's taken
                        // by the server (not a second one during the import).
                        let under_way = Terms::now().all + INTS.load(Ordering::SeqCst) > 0
                            || (n >= 2 && SERVING.load(Ordering::SeqCst));
                        write_byte(
                            fd,
                            if under_way {
                                QUIT_UNDER_WAY
                            } else {
                                QUIT_IMPORTING
                            },
                        );
                        return;
                    }
                    // SAFETY: signal, sigemptyset, sigaddset, pthread_sigmask and raise
                    // are async-signal-safe; `set` is a local.
                    unsafe {
                        libc::signal(libc::SIGTERM, libc::SIG_DFL);
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, libc::SIGTERM);
                        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                        libc::raise(libc::SIGTERM);
                    }
                    return;
                }
                wake();
            }
            return;
        }
        _ => return,
    };
    if signal != libc::SIGHUP && again(signal) {
        return;
    }
    let stops = match count {
        None => {
            let master = master_alive() && sender == PARENT.load(Ordering::SeqCst);
            let n = Terms::of(TERMS.fetch_add(Terms::one(master), Ordering::SeqCst)).all + 1;
            n + INTS.load(Ordering::SeqCst)
        }
        Some(count) => count.fetch_add(1, Ordering::SeqCst) + 1 + Terms::now().all,
    };
    if signal != libc::SIGHUP
        && stops >= 2
        && SINGLE.load(Ordering::SeqCst)
        && !SERVING.load(Ordering::SeqCst)
    {
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    if signal != libc::SIGHUP
        && stops == 1
        && SINGLE.load(Ordering::SeqCst)
        && !SERVING.load(Ordering::SeqCst)
    {
        // Taken once it serves: said now, by `on_quit_now`'s thread.
        // regression: nothing was said until the import returned (never, for an app
        // that runs a server at module level).
        let fd = QUIT_NOW.load(Ordering::SeqCst);
        if fd >= 0 {
            write_byte(
                fd,
                if signal == libc::SIGTERM {
                    NOTICE_TERM
                } else {
                    NOTICE_INT
                },
            );
        }
    }
    wake();
}

/// Writes `byte` on `fd` from the handler, errno kept for the code it interrupted.
fn write_byte(fd: libc::c_int, byte: u8) {
    // SAFETY: errno is thread-local and always valid to read and write; `fd` is a
    // pipe's write end, open for the life of the process; one byte from the stack.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, [byte].as_ptr().cast(), 1);
        *errno = saved;
    }
}

/// The same stop signal again within this of the last one counted is the same stop:
/// `timeout 10 postern` (coreutils) sends SIGTERM to postern and then to its whole
/// process group, so each process gets two at once (a worker: the group's and its
/// master's). A person's second Ctrl-C comes later than that.
/// regression: such a stop said "second signal: stopping now" and cut requests off.
pub const SAME_SIGNAL_AGAIN: std::time::Duration = std::time::Duration::from_millis(50);

/// CLOCK_MONOTONIC nanoseconds when the last SIGTERM / SIGINT was counted (0: none).
static LAST_TERM_NS: AtomicU64 = AtomicU64::new(0);
static LAST_INT_NS: AtomicU64 = AtomicU64::new(0);

/// In the handler: whether `signal` (SIGTERM or SIGINT) came within
/// [`SAME_SIGNAL_AGAIN`] of the last one counted (then it is not counted); else it is
/// the one counted last from now.
fn again(signal: libc::c_int) -> bool {
    let last = if signal == libc::SIGTERM {
        &LAST_TERM_NS
    } else {
        &LAST_INT_NS
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe; `ts` is a local. It sets errno only
    // on failure, which CLOCK_MONOTONIC does not have.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return false;
    }
    let now = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .max(1);
    same_again(last, now)
}

/// [`again`]'s decision at `now` (CLOCK_MONOTONIC ns): one compare-and-swap, so that of
/// two signals handled at the same moment on two threads only one is counted.
/// regression: a load then a store let both be counted (both saw the older time).
fn same_again(last: &AtomicU64, now: u64) -> bool {
    let mut prev = last.load(Ordering::SeqCst);
    loop {
        if prev != 0 && now.saturating_sub(prev) < SAME_SIGNAL_AGAIN.as_nanos() as u64 {
            return true;
        }
        match last.compare_exchange_weak(prev, now, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return false,
            Err(seen) => prev = seen,
        }
    }
}

fn wake() {
    let fd = WAKE.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: errno is thread-local and always valid to read and write; fd is the
    // pipe's write end, open for the life of the process; one byte from a static.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, b"!".as_ptr().cast(), 1);
        *errno = saved;
    }
}

/// A single process's SIGUSR1 handler reopened the log files: the server says so
/// ([`Waiter::on_logs_reopened`]), since the handler cannot log. A worker's reopening
/// is said by its master. Async-signal-safe: an atomic add and a write to the pipe.
/// regression (probe 402): a single process said nothing on SIGUSR1, where a master
/// logs "log files reopened".
pub fn logs_reopened() {
    // SAFETY: getpid(2) cannot fail. A child the app forked (no exec) inherits the
    // handler and the pipe: its SIGUSR1 is not this server's to say.
    if SINGLE.load(Ordering::SeqCst) && unsafe { libc::getpid() } == OWNER.load(Ordering::SeqCst) {
        REOPENS.fetch_add(1, Ordering::SeqCst);
        wake();
    }
}

/// Why stops cannot be taken: the process must not serve then (it could never be
/// stopped but by SIGKILL), so each caller fails its start with this sentence (with
/// the open-file advice, `supervisor::with_open_files_advice`, where it is printed).
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("cannot set up the handling of SIGTERM (its wake-up pipe): {0}")]
    Pipe(io::Error),
    #[error("cannot install the {signal} handler: {error}")]
    Handler {
        signal: &'static str,
        error: io::Error,
    },
    #[error("cannot wait for SIGTERM in the I/O runtime: {0}")]
    Register(io::Error),
}

/// The signals whose default action ends or stops the process and that come from an
/// operator's routine rather than to stop it: `systemctl reload` (SIGHUP) right after
/// `systemctl start`, logrotate's SIGUSR1, a scaling script's SIGTTIN/SIGTTOU, a
/// gunicorn habit's SIGUSR2. [`hold_at_start`] blocks them before anything else, until
/// a handler for each is in place; one that came meanwhile waits (pending) and is then
/// taken as it would have been a moment later. SIGTERM, SIGINT and SIGQUIT are not
/// held: before the handlers, stopping is what they should do.
pub const HELD_AT_START: [i32; 5] = [
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// Blocks [`HELD_AT_START`] in the calling thread and in every thread it starts from
/// now (they inherit the mask): first thing in `main`, while the process has one thread.
/// Undone by [`release_held`] once their handlers are in place (a single process), or
/// kept by the master, which reads them from its signalfd and unblocks them in each
/// child it forks; a command that does not serve releases them at once (their default
/// actions are right for it).
/// regression: a SIGHUP 20 to 50 ms after the exec (a debug build) killed postern
/// (exit 129) before its handlers were set; SIGUSR1 and SIGUSR2 killed it, SIGTTIN and
/// SIGTTOU stopped it.
pub fn hold_at_start() -> io::Result<()> {
    held_mask(libc::SIG_BLOCK)
}

/// Unblocks [`HELD_AT_START`] in the calling thread: a signal held meanwhile is
/// delivered now, to its handler. Before the process starts the threads that run the
/// app (Python's, the I/O runtime's): they inherit the mask, and so would the programs
/// the app runs from them (`subprocess` keeps the mask across exec).
pub fn release_held() -> io::Result<()> {
    held_mask(libc::SIG_UNBLOCK)
}

fn held_mask(how: libc::c_int) -> io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset before use, with valid signal
    // numbers; pthread_sigmask changes only this thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HELD_AT_START {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Installs the counting handler for SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGTTIN and
/// SIGTTOU, in a single process SIGUSR2 too (and the ones for [`MASTER_DEATH`] and
/// [`STOP_NOW_SIGNAL`]), or puts
/// it back. The counts are kept across calls. In a forked worker it must run
/// before the signals the master blocked are unblocked, so that none reaches the
/// default action; the server calls it again once the app is imported, and says so
/// when the app had put a handler of its own in place. It fails only the first time
/// in a process, or not at all.
pub fn install(single: bool) -> Result<(), StopError> {
    OWNER.store(std::process::id() as i32, Ordering::SeqCst);
    // The first time only: the parent may be gone by the second (the handler has told).
    // SAFETY: getppid cannot fail.
    let _ = PARENT.compare_exchange(
        0,
        unsafe { libc::getppid() },
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    SINGLE.store(single, Ordering::SeqCst);
    if PIPE.get().is_none() {
        let (read, write) = wake_pipe()?;
        WAKE.store(write.as_raw_fd(), Ordering::SeqCst);
        let _ = PIPE.set((read, write));
    }
    STOP_NOW_SIGNAL.store(stop_now_signal(), Ordering::Relaxed);
    let signals = [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (MASTER_DEATH, "SIGURG"),
        (stop_now_signal(), "SIGRTMIN+5"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
    ];
    // A worker's SIGUSR2 dumps its stacks (crate::wsgi::stacks, after this).
    let usr2 = [(libc::SIGUSR2, "SIGUSR2")];
    let signals = signals.iter().chain(usr2.iter().filter(|_| single));
    let ours = on_signal as *const () as usize;
    for &(signal, name) in signals {
        // SIGTTIN, SIGTTOU and SIGUSR2 are only kept from their default actions: a
        // handler the app set for one of them (`faulthandler.register(SIGUSR2)`) stays.
        if [libc::SIGTTIN, libc::SIGTTOU, libc::SIGUSR2].contains(&signal) {
            // SAFETY: reads the current action into a zeroed struct.
            let current = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, std::ptr::null(), &mut old);
                old.sa_sigaction
            };
            if ![ours, libc::SIG_DFL].contains(&current) {
                continue;
            }
        }
        // SAFETY: a zeroed sigaction with an empty mask and a handler that does only
        // async-signal-safe work; the previous action is read into a zeroed struct.
        let previous = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &action, &mut old) != 0 {
                return Err(StopError::Handler {
                    signal: name,
                    error: io::Error::last_os_error(),
                });
            }
            old.sa_sigaction
        };
        // Not for SIGINT: importing Python's `signal` module puts its own
        // KeyboardInterrupt handler in place when SIGINT has the default action.
        if signal == libc::SIGTERM && ![ours, libc::SIG_DFL, libc::SIG_IGN].contains(&previous) {
            tracing::warn!(
                signal = name,
                "a {name} handler was set at the app's import (by a C extension?); postern's is put back, so that one is not called from now on: stop work belongs in atexit or, for ASGI, the lifespan shutdown"
            );
        }
    }
    Ok(())
}

/// A single process: `end` runs on a thread of its own when a SIGQUIT comes that the
/// server cannot take (the app still importing, or a stop already under way), told
/// whether a stop was under way; it must end the process (it cleans up what the
/// process made, then `_exit`). A third SIGQUIT ends the process in the handler if
/// `end` has not.
///
/// Until the server serves, the same thread says what a stop signal will do: the first
/// SIGTERM or SIGINT at once (it is acted on once the server runs; a second one stops
/// at once), and every [`STILL_STARTING_EVERY`] that the app is still importing.
pub fn on_quit_now(end: impl FnOnce(bool) + Send + 'static) -> io::Result<()> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    std::thread::Builder::new()
        .name("postern-quit".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            // Signals go to the threads that serve or import (this one only waits).
            // SAFETY: a full set, initialised by sigfillset; the old mask is not wanted.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            let started = std::time::Instant::now();
            let mut next = STILL_STARTING_EVERY;
            // The stop signal taken while the app starts, and when.
            let mut pending: Option<(&str, std::time::Instant)> = None;
            loop {
                let serving = SERVING.load(Ordering::SeqCst);
                let timeout = (!serving).then(|| {
                    let left = next.saturating_sub(started.elapsed());
                    rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                        tv_sec: i64::MAX,
                        tv_nsec: 0,
                    })
                });
                let mut fds = [rustix::event::PollFd::new(
                    &read,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(0) => {
                        if !SERVING.load(Ordering::SeqCst) {
                            still_starting(next, pending);
                        }
                        next += STILL_STARTING_EVERY;
                        continue;
                    }
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                }
                let mut byte = [0u8; 1];
                match rustix::io::read(&read, &mut byte) {
                    Ok(1) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => return,
                }
                let signal = match byte[0] {
                    NOTICE_TERM => "SIGTERM",
                    NOTICE_INT => "SIGINT",
                    b => return end(b == QUIT_UNDER_WAY),
                };
                // The server may have begun to serve meanwhile: it says it stops.
                if pending.is_none() && !SERVING.load(Ordering::SeqCst) {
                    pending = Some((signal, std::time::Instant::now()));
                    tracing::warn!(
                        "{signal} received while the app {}: stopping once {}, after serving what waits in the listen queue (send it again to stop now)",
                        starting(),
                        if IMPORTED.load(Ordering::SeqCst) {
                            "the startup is over"
                        } else {
                            "the import returns"
                        },
                    );
                }
            }
        })?;
    // Open for the life of the process (the handler may write at any time).
    QUIT_NOW.store(write.into_raw_fd(), Ordering::SeqCst);
    Ok(())
}

/// A single process: the app's import is over (what is left before it serves is an
/// ASGI lifespan startup).
pub fn imported() {
    IMPORTED.store(true, Ordering::SeqCst);
}

/// The ASGI app answered its lifespan startup in time: what still holds the server
/// from serving is its event loop (called from the loop thread).
pub fn lifespan_answered() {
    ANSWERED.store(true, Ordering::SeqCst);
}

/// What the app is doing before the server serves, for a sentence.
fn starting() -> &'static str {
    if IMPORTED.load(Ordering::SeqCst) {
        "runs its ASGI lifespan startup"
    } else {
        "imports"
    }
}

/// The warning that the app is still starting `after` its start, with the stop signal
/// taken meanwhile.
fn still_starting(after: std::time::Duration, pending: Option<(&str, std::time::Instant)>) {
    let secs = after.as_secs();
    if IMPORTED.load(Ordering::SeqCst) {
        // An ASGI lifespan startup: the import's advice (a server started at module
        // level) does not fit. regression: it said "app.run()" for a startup handler
        // that never completed.
        let (what, why) = if ANSWERED.load(Ordering::SeqCst) {
            // regression: "the app has not sent lifespan.startup.complete" for an app
            // that had, whose startup task then blocked the loop.
            ("not serving yet", "the app answered its ASGI lifespan startup (lifespan.startup.complete) in time, but its event loop has been blocked since. Does a task the startup started make a sync call (time.sleep, a blocking connect or query)? Await an async version or run it with loop.run_in_executor. It is given up if its loop is not free within another --lifespan-timeout")
        } else {
            ("still in the app's ASGI lifespan startup", "the app has not sent lifespan.startup.complete. Does a startup handler wait for something (a database or service connect without a timeout) or never return? It is given up at --lifespan-timeout")
        };
        match pending {
            Some((signal, at)) => tracing::warn!(
                "{what} after {secs} s: {why}; the {signal} received {} s ago is acted on once it ends (send it again to stop now)",
                at.elapsed().as_secs()
            ),
            None => tracing::warn!(
                "{what} after {secs} s: {why}; a SIGTERM or Ctrl-C meanwhile is acted on once it ends"
            ),
        }
        return;
    }
    let what = "still importing the app";
    match pending {
        Some((signal, at)) => tracing::warn!(
            "{what} after {secs} s; the {signal} received {} s ago is acted on once it returns (send it again to stop now). Does it wait for something: a connection without a timeout, or a server started at module level (app.run())?",
            at.elapsed().as_secs()
        ),
        None => tracing::warn!(
            "{what} after {secs} s: does it wait for something, a connection without a timeout, or a server started at module level (app.run())? A SIGTERM or Ctrl-C meanwhile is acted on once it returns"
        ),
    }
}

/// The wake-up pipe (read end, write end): non-blocking, so neither the handler's
/// write nor the server's draining read ever waits.
fn wake_pipe() -> Result<(OwnedFd, OwnedFd), StopError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .map_err(|e| StopError::Pipe(e.into()))
}

/// The worker stops accepting and finishes its requests, as for a SIGTERM: it stands
/// in for the first one, so a SIGTERM that comes too (the master's, sent as it saw the
/// recycling) is not read as a second.
pub fn recycle() {
    RECYCLE.store(true, Ordering::SeqCst);
    wake();
}

/// The SIGINTs that ask for a stop: a single process's (a worker ignores SIGINT).
fn stop_ints() -> u32 {
    if SINGLE.load(Ordering::SeqCst) {
        INTS.load(Ordering::SeqCst)
    } else {
        0
    }
}

/// Whether a SIGQUIT asked for an immediate stop (a single process's: a worker ignores
/// SIGQUIT), or a worker's master did ([`stop_now`]).
fn quit() -> bool {
    (SINGLE.load(Ordering::SeqCst) && QUITS.load(Ordering::SeqCst) > 0)
        || MASTER_QUIT.load(Ordering::SeqCst) != 0
}

/// The stop is immediate: SIGQUIT (a single process's, or its master's).
pub fn quitting() -> bool {
    quit()
}

/// Why a master stops a worker at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopNow {
    /// A second SIGTERM or SIGINT during the stop (the signal's number).
    Second(i32),
    /// SIGQUIT to the master.
    Quit,
    /// The stop's deadline passed (`--graceful-timeout`, then an ASGI lifespan
    /// shutdown's allowance).
    Deadline,
    /// The worker is condemned for `--timeout` (a request past it, or its event loop
    /// blocked) and its stack dump is over: the master has named what it cuts off.
    Timeout,
}

impl StopNow {
    /// What is sent with the signal: never 0.
    const fn code(self) -> u32 {
        match self {
            StopNow::Quit => 1,
            StopNow::Deadline => 2,
            StopNow::Timeout => 6,
            StopNow::Second(libc::SIGINT) => 3,
            StopNow::Second(libc::SIGQUIT) => 5,
            StopNow::Second(_) => 4,
        }
    }

    const fn of(code: u32) -> Option<StopNow> {
        match code {
            1 => Some(StopNow::Quit),
            2 => Some(StopNow::Deadline),
            3 => Some(StopNow::Second(libc::SIGINT)),
            4 => Some(StopNow::Second(libc::SIGTERM)),
            5 => Some(StopNow::Second(libc::SIGQUIT)),
            6 => Some(StopNow::Timeout),
            _ => None,
        }
    }

    /// What the cut-off lines say: "request cut off by {this}".
    pub fn says(self) -> &'static str {
        match self {
            StopNow::Quit => "SIGQUIT",
            StopNow::Deadline => "the stop's deadline (--graceful-timeout, then the ASGI lifespan shutdown's allowance)",
            StopNow::Timeout => "--timeout",
            StopNow::Second(libc::SIGINT) => "a second signal (SIGINT)",
            StopNow::Second(libc::SIGQUIT) => "a second signal (SIGQUIT)",
            StopNow::Second(_) => "a second signal (SIGTERM)",
        }
    }
}

/// The master asks worker `pid` to stop at once, for `why`: [`STOP_NOW_SIGNAL`] queued
/// with the reason, which the worker takes from its live master only
/// ([`master_stop_now`]).
pub fn stop_now(pid: i32, why: StopNow) -> io::Result<()> {
    let value = libc::sigval {
        sival_ptr: why.code() as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue has no memory preconditions; the value is a plain integer.
    if unsafe { libc::sigqueue(pid, stop_now_signal(), value) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// In a worker: why its master asked it to stop at once, if it did ([`stop_now`]).
pub fn master_stop_now() -> Option<StopNow> {
    StopNow::of(MASTER_QUIT.load(Ordering::SeqCst))
}

/// The reason [`Waiter::first`] and [`Waiter::second`] give for SIGQUIT: stop now,
/// without waiting for the requests in flight.
pub const QUIT: &str = "SIGQUIT";

/// The master marked this worker to leave while it booted (its SIGTERM was sent, or is
/// on its way): the worker stops as for that SIGTERM, even if the signal itself was
/// taken by a handler the app set lower than `signal.signal` (faulthandler, a C
/// extension) while it imported. Like a recycling it stands in for one signal, so the
/// SIGTERM counted too is not read as a second.
/// regression: a stop sent while an app that set such a handler imported was lost.
pub fn asked() {
    ASKED.store(true, Ordering::SeqCst);
    wake();
}

/// The reason [`Waiter::first`] gives for [`listeners_shut`].
pub const LISTENERS_SHUT: &str = "listeners shut down";

/// How long a process that finds its listeners shut waits for the stop signal the
/// master sent just before, before it takes the shut as its stop.
const SHUT_SIGNAL_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The server is stopping (the master said so) and this process's listeners were shut
/// down under it (by the master, or by a sibling worker serving its listen queue
/// before it leaves): nothing more can be accepted, so it stops as for a SIGTERM, which
/// may never come (an app or a C extension took or ignored it once it served; see
/// [`signalled`]).
/// regression: such a worker spun on accept4 (EINVAL, or EAGAIN from a Unix listener
/// the master shut) at 100% CPU until the master killed it past --graceful-timeout,
/// and the stop exited 1.
pub fn listeners_shut() {
    SHUT.store(true, Ordering::SeqCst);
    wake();
}

/// The signal a worker's master's death sends it (`PR_SET_PDEATHSIG`): its handler
/// says [`master_gone`] (when the parent changed: a stray one does nothing). Not
/// SIGTERM: a worker already leaving (a reload, SIGTTOU) counted that as a second stop
/// signal and cut its requests off. SIGURG is ignored by default (one that comes
/// before the handler is in place, or after the app put SIG_DFL back, does nothing;
/// the thread that watches the master tells then) and is sent by nothing else
/// postern or a front server does (only for out-of-band TCP data to a socket's
/// F_SETOWN owner).
/// regression: a worker leaving after a reload when its master was SIGKILLed cut its
/// in-flight requests off ("second signal: stopping now").
pub const MASTER_DEATH: libc::c_int = libc::SIGURG;

/// Whether this worker's master is gone ([`master_gone`], or [`MASTER_DEATH`]).
pub fn orphaned() -> bool {
    ORPHAN.load(Ordering::SeqCst)
}

/// The reason [`Waiter::first`] gives for [`master_gone`].
pub const MASTER_GONE: &str = "master gone";

/// This worker's master died (SIGKILL, the OOM killer): told by the thread that
/// watches the master, and by the handler of [`MASTER_DEATH`]. It stops as for a
/// SIGTERM (one that is not counted as a stop signal: a worker already leaving keeps
/// draining).
/// regression: such a worker outlived its master forever (and, with a Unix listener
/// the master had shut, spun on accept4).
pub fn master_gone() {
    ORPHAN.store(true, Ordering::SeqCst);
    wake();
}

/// Whether this worker's master has exited (its parent is no longer the one it had at
/// [`install`]), whether or not [`master_gone`] was told yet. Always false for a
/// single process.
pub fn parent_gone() -> bool {
    let parent = PARENT.load(Ordering::SeqCst);
    // SAFETY: getppid has no preconditions.
    !SINGLE.load(Ordering::SeqCst) && parent != 0 && unsafe { libc::getppid() } != parent
}

/// Whether this is a worker whose master is alive (its parent is still the one it had
/// at [`install`]). Async-signal-safe (atomics, getppid).
fn master_alive() -> bool {
    let parent = PARENT.load(Ordering::SeqCst);
    // SAFETY: getppid has no preconditions and is async-signal-safe.
    !SINGLE.load(Ordering::SeqCst)
        && !ORPHAN.load(Ordering::SeqCst)
        && parent != 0
        && unsafe { libc::getppid() } == parent
}

/// When this process began to stop (its first stop taken by the server), if it has.
pub fn began() -> Option<std::time::Instant> {
    BEGAN.get().copied()
}

/// Whether postern's handler is SIGTERM's disposition now: a SIGTERM sent will be
/// counted (unless blocked in every thread). False once the app or a C extension has
/// put another one in place, or SIG_IGN.
pub fn handler_in_place() -> bool {
    // SAFETY: reads the current action into a zeroed struct; changes nothing.
    let current = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old) != 0 {
            return true;
        }
        old.sa_sigaction
    };
    current == on_signal as *const () as usize
}

/// Whether a stop came by the usual ways: a stop signal counted, a recycling, or the
/// master's mark on the scoreboard.
pub fn signalled() -> bool {
    Terms::now().all + stop_ints() > 0
        || quit()
        || RECYCLE.load(Ordering::SeqCst)
        || ASKED.load(Ordering::SeqCst)
}

/// Whether this process has been asked to stop by any way at all (a stop signal, a
/// recycling, the master's mark, its listeners shut, its master gone).
pub fn any() -> bool {
    signalled() || SHUT.load(Ordering::SeqCst) || ORPHAN.load(Ordering::SeqCst)
}

/// Whether the stop signals counted now (`terms`, `ints`) hold one more than the
/// `first` stop, which was taken when `from_master` of the SIGTERMs were the master's:
/// those the master sent since are not a second signal.
fn second_signal(terms: Terms, ints: u32, first: u32, from_master: u32) -> bool {
    let held = terms.from_master.wrapping_sub(from_master);
    (terms.all + ints).saturating_sub(held) > first
}

/// The server's side: waits for the requests to stop, from inside its runtime.
pub struct Waiter {
    fd: tokio::io::unix::AsyncFd<BorrowedFd<'static>>,
    hups: u32,
    /// [`TTINS`], [`TTOUS`] and [`USR2S`] as last said ([`Waiter::say_ignored`]).
    ignored: [u32; 3],
    /// The stop signals counted when the first stop was taken: together they are the
    /// first (a worker signalled twice while it booted was not told "stop now"), and a
    /// recycling stands in for one.
    first: u32,
    /// [`Terms::from_master`] when the first stop was taken: the SIGTERMs since, while the
    /// master lived, are not a second signal.
    under_master: u32,
    /// The first stop was a SIGTERM or SIGINT that the master did not send
    /// ([`Waiter::first_from_elsewhere`]).
    elsewhere: bool,
    /// [`REOPENS`] as last said, and what says it ([`Waiter::on_logs_reopened`]).
    reopens: u32,
    say_reopened: Option<fn()>,
}

impl Waiter {
    /// After [`install`]; registers the pipe with the current tokio runtime.
    pub fn new() -> Result<Waiter, StopError> {
        let Some((read, _)) = PIPE.get() else {
            return Err(StopError::Register(io::Error::other(
                "the stop handler is not installed",
            )));
        };
        // SAFETY: the pipe is the process's (a static, never dropped): its descriptor
        // stays open and the same for as long as this AsyncFd lives.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                read.as_fd(),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| StopError::Register(e.into()))?;
        Ok(Waiter {
            fd,
            hups: 0,
            ignored: [0; 3],
            first: 0,
            under_master: 0,
            elsewhere: false,
            reopens: 0,
            say_reopened: None,
        })
    }

    /// `say` tells the log that a SIGUSR1 reopened the log files ([`logs_reopened`]),
    /// while the server waits for its stop and during it.
    pub fn on_logs_reopened(&mut self, say: fn()) {
        self.say_reopened = Some(say);
    }

    /// Says each SIGUSR1's reopening that came since it last looked (several at once:
    /// one line).
    fn say_reopens(&mut self) {
        let n = REOPENS.load(Ordering::SeqCst);
        if n != self.reopens {
            self.reopens = n;
            if let Some(say) = self.say_reopened {
                say();
            }
        }
    }

    /// Says the SIGTTINs, SIGTTOUs and SIGUSR2s that came since it last looked, once
    /// each kind.
    fn say_ignored(&mut self, single: bool) {
        let kinds = [
            (&TTINS, "SIGTTIN", "adding a worker"),
            (&TTOUS, "SIGTTOU", "removing a worker"),
            (&USR2S, "SIGUSR2", ""),
        ];
        for (i, (count, name, what)) in kinds.into_iter().enumerate() {
            let n = count.load(Ordering::SeqCst);
            if n <= self.ignored[i] {
                continue;
            }
            self.ignored[i] = n;
            match (single, what.is_empty()) {
                (true, false) => tracing::warn!(
                    "{name} ignored: {what} needs the master (--master or --workers 2+)"
                ),
                (true, true) => tracing::warn!(
                    "{name} ignored: postern has no binary upgrade (gunicorn's USR2); restart it to run a new binary"
                ),
                (false, _) => {
                    tracing::debug!("{name} ignored by the worker: the master handles it")
                }
            }
        }
    }

    /// The server serves: from here a second stop signal to a single process is read
    /// as "stop now" ([`Waiter::second`]); before (the app importing, an ASGI lifespan
    /// starting) it kills at once.
    pub fn serving(&self) {
        SERVING.store(true, Ordering::SeqCst);
    }

    /// The first stop (after [`Waiter::first`]) was a SIGTERM (or a single process's
    /// SIGINT) sent by someone other than the master: to a worker, that is mostly a
    /// signal to the whole process group (systemd's `KillMode=control-group`,
    /// `timeout`), which reaches the master too.
    pub fn first_from_elsewhere(&self) -> bool {
        self.elsewhere
    }

    /// The first request to stop: "SIGTERM", "SIGINT", [`QUIT`], "recycling" or
    /// [`LISTENERS_SHUT`]. SIGHUPs before
    /// it are logged and ignored.
    pub async fn first(&mut self) -> &'static str {
        let why = self.first_reason().await;
        let _ = BEGAN.set(std::time::Instant::now());
        why
    }

    async fn first_reason(&mut self) -> &'static str {
        let mut shut_seen = None;
        loop {
            let single = SINGLE.load(Ordering::SeqCst);
            let hups = HUPS.load(Ordering::SeqCst);
            if hups > self.hups {
                self.hups = hups;
                if single {
                    tracing::warn!(
                        "SIGHUP ignored: reloading needs the master (--master or --workers 2+)"
                    );
                } else {
                    tracing::debug!("SIGHUP ignored by the worker: the master reloads");
                }
            }
            self.say_ignored(single);
            self.say_reopens();
            let (terms, ints) = (Terms::now(), stop_ints());
            self.first = (terms.all + ints).max(1);
            self.under_master = terms.from_master;
            self.elsewhere = terms.all > terms.from_master || ints > 0;
            if quit() {
                return QUIT;
            }
            if terms.all > 0 {
                return "SIGTERM";
            }
            if ints > 0 {
                return "SIGINT";
            }
            if RECYCLE.load(Ordering::SeqCst) {
                return "recycling";
            }
            if ASKED.load(Ordering::SeqCst) {
                return "SIGTERM";
            }
            if SHUT.load(Ordering::SeqCst) {
                // The master signals its workers around the moment it shuts the
                // listeners (its stop now just before, at SIGQUIT; SIGTERM just after):
                // this process may see them shut before its handler has run. A moment
                // for the signal, so that the stop is taken for what it is.
                // regression: at SIGQUIT a worker now and then logged "letting
                // in-flight requests finish" and was stopped at once a moment later.
                if shut_seen.is_none() {
                    let seen = std::time::Instant::now();
                    shut_seen = Some(seen);
                    while !signalled() && seen.elapsed() < SHUT_SIGNAL_WAIT {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    continue;
                }
                return LISTENERS_SHUT;
            }
            if ORPHAN.load(Ordering::SeqCst) {
                return MASTER_GONE;
            }
            self.woken().await;
        }
    }

    /// A stop signal after the first stop was taken (after [`Waiter::first`]): stop at
    /// once. After a recycling, the second signal. A single process's SIGQUIT, before
    /// or after the first stop: at once. A worker counts none that came while its
    /// master was alive ([`Terms::from_master`]); an orphan escalates on those that come
    /// after its master's death.
    pub async fn second(&mut self) -> &'static str {
        let ints_before = stop_ints();
        loop {
            self.say_reopens();
            if quit() {
                return QUIT;
            }
            let (terms, ints) = (Terms::now(), stop_ints());
            if second_signal(terms, ints, self.first, self.under_master) {
                return if ints > ints_before {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
            }
            self.woken().await;
        }
    }

    /// Whether [`Waiter::second`] would return now (a look, for a wait that cannot
    /// select on it): the check, detached from the waiter.
    pub fn second_came(&self) -> impl Fn() -> bool + use<> {
        let (first, under_master) = (self.first, self.under_master);
        move || quit() || second_signal(Terms::now(), stop_ints(), first, under_master)
    }

    /// Until a byte was written since the pipe was last found empty; drains it. The
    /// readiness is cleared only when a read finds the pipe empty, so a byte written
    /// after a look at the counts always wakes the next wait.
    async fn woken(&self) {
        let Ok(mut ready) = self.fd.readable().await else {
            // The runtime is shutting down: nothing more will be read.
            return std::future::pending().await;
        };
        let mut buf = [0u8; 64];
        while let Ok(Ok(n)) = ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf)?)) {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reason the master queues with its stop now comes back whole in the worker,
    // and none is 0 (the worker's "no stop now").
    #[test]
    fn a_stop_now_reason_survives_the_signal() {
        for why in [
            StopNow::Quit,
            StopNow::Deadline,
            StopNow::Timeout,
            StopNow::Second(libc::SIGTERM),
            StopNow::Second(libc::SIGINT),
            StopNow::Second(libc::SIGQUIT),
        ] {
            assert_ne!(why.code(), 0);
            assert_eq!(StopNow::of(why.code()), Some(why));
        }
        assert_eq!(StopNow::of(0), None);
        assert_eq!(
            StopNow::Second(libc::SIGTERM).says(),
            "a second signal (SIGTERM)"
        );
    }

    // The handler's one add carries a SIGTERM and whether its master sent it, so one
    // load reads both: the halves never carry into each other.
    #[test]
    fn a_sigterm_and_its_sender_are_counted_in_one_word() {
        let word = AtomicU64::new(0);
        for master in [true, false, true, false, false] {
            word.fetch_add(Terms::one(master), Ordering::SeqCst);
        }
        let t = Terms::of(word.load(Ordering::SeqCst));
        assert_eq!(
            t,
            Terms {
                all: 5,
                from_master: 2
            }
        );
        let many = u64::from(u32::MAX - 1) * Terms::one(false) + Terms::one(true);
        assert_eq!(
            Terms::of(many),
            Terms {
                all: u32::MAX,
                from_master: 1
            }
        );
    }

    // regression: TERMS and UNDER_MASTER were two atomics read one after the other. A
    // master's SIGTERM between the two reads of the first stop was counted as the first
    // stop and held as the master's as well (first 1, master's 0 at the first stop):
    // an operator's second `kill -TERM` then did not stop the worker at once. Read as
    // one word, the first stop sees the master's SIGTERM in both counts or in neither.
    #[test]
    fn a_second_sigterm_from_elsewhere_after_the_masters_is_a_second_signal() {
        let word = AtomicU64::new(0);
        word.fetch_add(Terms::one(true), Ordering::SeqCst);
        let at_first = Terms::of(word.load(Ordering::SeqCst));
        let first = at_first.all;
        assert!(!second_signal(at_first, 0, first, at_first.from_master));
        // The master forwards the group's SIGTERM again: the same stop.
        let again = Terms::of(word.load(Ordering::SeqCst) + Terms::one(true));
        assert!(!second_signal(again, 0, first, at_first.from_master));
        // Someone else sends one: stop now.
        word.fetch_add(Terms::one(false), Ordering::SeqCst);
        let now = Terms::of(word.load(Ordering::SeqCst));
        assert!(second_signal(now, 0, first, at_first.from_master));
        // What the two separate reads could see: the master's SIGTERM in the first stop
        // but not among the master's, so it was subtracted twice.
        assert!(!second_signal(now, 0, first, 0));
    }

    // regression: `again` was a load then a store: two SIGTERMs handled at the same
    // moment on two threads both read the old time and were both counted (a second
    // signal: "stopping now"). Many threads at one `now`: exactly one is counted.
    #[test]
    fn counts_one_of_the_same_signal_on_many_threads_at_once() {
        const THREADS: usize = 8;
        for round in 0..200u64 {
            let last = AtomicU64::new(0);
            let gate = std::sync::Barrier::new(THREADS);
            let now = (round + 1) * 1_000_000_000;
            let counted: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            gate.wait();
                            !same_again(&last, now)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| usize::from(h.join().unwrap()))
                    .sum()
            });
            assert_eq!(counted, 1, "round {round}");
        }
    }

    #[test]
    fn counts_the_same_signal_again_after_the_window() {
        let last = AtomicU64::new(0);
        let t = 5_000_000_000;
        let window = SAME_SIGNAL_AGAIN.as_nanos() as u64;
        assert!(!same_again(&last, t));
        assert!(same_again(&last, t + window - 1));
        assert!(!same_again(&last, t + window));
    }

    // regression: a process whose wake-up pipe could not be made (EMFILE under a low
    // `ulimit -n`) went on without a working stop: a worker booted unprotected, and
    // one whose server then failed the same way served, never ready, deaf to SIGTERM.
    // The callers now fail the start with this error.
    #[test]
    fn rejects_a_start_without_room_for_the_wake_up_pipe() {
        // In a child: the limit is the process's, and the pipe is made once per process.
        // SAFETY: the child makes only system calls (no allocation, no lock) and leaves
        // with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; open/close/setrlimit on this process only.
            let code = unsafe {
                // Every descriptor below the lowest free one is in use: a limit one above
                // it leaves room for one descriptor, and the pipe needs two.
                let free = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                libc::close(free);
                let mut limit = std::mem::zeroed::<libc::rlimit>();
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = (free + 1) as libc::rlim_t;
                if free < 0 || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    2
                } else {
                    // A pipe another test of this process made came across the fork.
                    let made = if PIPE.get().is_none() {
                        install(false)
                    } else {
                        wake_pipe().map(|_| ())
                    };
                    match made {
                        Err(StopError::Pipe(e)) if e.raw_os_error() == Some(libc::EMFILE) => 0,
                        Err(_) => 3,
                        Ok(()) => 4,
                    }
                }
            };
            // SAFETY: leaves the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "2: no limit set, 3: another error, 4: no error"
        );
        // What the user reads: the cause (what to change is added where it is printed,
        // the same on every path: supervisor::with_open_files_advice).
        let said = StopError::Pipe(io::Error::from_raw_os_error(libc::EMFILE)).to_string();
        assert!(said.contains("Too many open files"), "{said}");
    }
}
