//! The worker's Python stack dumps (`--timeout`, `--slow-log`), as log events.
//!
//! The master sends a worker SIGUSR2; faulthandler's C handler writes every Python
//! thread's stack from the signal handler itself, without the GIL, so a dump works
//! even when a thread holds the GIL forever. It writes to a file descriptor, in many
//! small writes. Written to stderr, a dump bypassed postern's log: with `--log-file`
//! it was not in the log at all, in JSON logs it was raw text between JSON lines, and
//! a log line of another process could land in the middle of a frame.
//!
//! So faulthandler writes into a pipe, and after the dump our SIGUSR2 handler (which
//! calls faulthandler's, see [`on_usr2`]) writes a NUL byte, which never occurs in a dump: a thread of
//! ours ("postern-stacks", no Python, no GIL) reads the pipe and logs everything up to
//! each NUL as one `warn` event, through `tracing`, to wherever postern's log goes.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;

use pyo3::prelude::*;

use super::WsgiError;

/// The pipe's write end faulthandler writes to (-1: dumps not enabled). Never closed.
static DUMP_FD: AtomicI32 = AtomicI32::new(-1);

/// Called by the reader thread after each dump is logged (the ASGI worker logs its
/// tasks' stacks then, so they come after the threads' stacks in the log).
static AFTER_DUMP: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// The pipe's size: most dumps fit, so the signal handler seldom waits for the reader
/// (faulthandler writes up to 100 frames of each of up to 100 threads: with long file
/// paths that can be a few MiB, which the handler then writes as the reader drains
/// the pipe; the reader itself never takes the signal, see [`read_dumps`]).
const PIPE_SIZE: usize = 1 << 20;

/// The synchronous faults: never blocked (a fault the kernel finds blocked takes its
/// default action, past the handlers that answer a crashed request).
const FAULTS: [libc::c_int; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Every signal but [`FAULTS`].
fn all_but_faults() -> libc::sigset_t {
    // SAFETY: sigfillset and sigdelset on a zeroed sigset_t of our own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in FAULTS {
            libc::sigdelset(&mut set, fault);
        }
        set
    }
}

/// A dump larger than this is logged in parts.
const MAX_EVENT: usize = 4 << 20;

/// Whether [`enable`] ran in this process.
pub fn enabled() -> bool {
    DUMP_FD.load(Ordering::Relaxed) >= 0
}

/// Sets what runs after each dump is logged (on the reader thread); once per process.
pub fn after_dump(f: Box<dyn Fn() + Send + Sync>) {
    let _ = AFTER_DUMP.set(f);
}

/// faulthandler's own SIGUSR2 handler (a plain `sa_handler`), which [`on_usr2`] calls.
static FAULTHANDLER: AtomicUsize = AtomicUsize::new(0);

/// faulthandler's dump, then the NUL that ends it. Installed over faulthandler's
/// handler rather than chained under it: faulthandler's `chain=True` drops
/// `SA_RESTART` (a system call the signal interrupts fails with EINTR) and sets
/// `SA_NODEFER`, so a second SIGUSR2 during a dump (several requests past
/// `--slow-log` at once) ran nested: faulthandler's guard dumped nothing, but the
/// chained NUL cut the first dump's event in two. Here SIGUSR2 waits while a dump
/// runs, then makes its own whole one.
extern "C" fn on_usr2(sig: libc::c_int) {
    let dump = FAULTHANDLER.load(Ordering::Relaxed);
    if dump != 0 {
        // SAFETY: the value is faulthandler's `sa_handler`, read from sigaction(2)
        // before this handler replaced it; calling it is what the kernel would do.
        let dump: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(dump) };
        dump(sig);
    }
    let fd = DUMP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) and errno access are async-signal-safe; errno is restored
        // for the code the signal interrupted.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [0u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Makes SIGUSR2 dump every Python thread's stack into postern's log (module docs).
pub fn enable() -> Result<(), WsgiError> {
    let init = |reason: String| WsgiError::Init {
        reason: format!("enabling stack dumps: {reason}"),
    };
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| init(e.to_string()))?;
    // A smaller pipe only means the handler may wait for the reader thread.
    let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
    std::thread::Builder::new()
        .name("postern-stacks".into())
        .spawn(move || read_dumps(read))
        .map_err(|e| init(e.to_string()))?;
    let fd = write.into_raw_fd();
    DUMP_FD.store(fd, Ordering::Relaxed);
    Python::attach(|py| -> PyResult<()> {
        let usr2 = py.import("signal")?.getattr("SIGUSR2")?;
        let kw = pyo3::types::PyDict::new(py);
        kw.set_item("file", fd)?;
        kw.set_item("all_threads", true)?;
        kw.set_item("chain", false)?;
        py.import("faulthandler")?
            .call_method("register", (usr2,), Some(&kw))?;
        Ok(())
    })
    .map_err(|e| init(e.to_string()))?;
    // faulthandler's handler, then ours in its place (see on_usr2), with its flags
    // (SA_RESTART; SIGUSR2 itself blocked while the handler runs).
    // libc: rustix sets signal handlers only in its experimental runtime module.
    // SAFETY: sigaction(2) with valid structs; the handler only calls faulthandler's
    // (async-signal-safe by design) and write(2).
    unsafe {
        let mut theirs: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut theirs) != 0
            || theirs.sa_flags & libc::SA_SIGINFO != 0
            || theirs.sa_sigaction == libc::SIG_DFL
            || theirs.sa_sigaction == libc::SIG_IGN
        {
            return Err(init("faulthandler installed no SIGUSR2 handler".into()));
        }
        FAULTHANDLER.store(theirs.sa_sigaction, Ordering::Relaxed);
        let mut ours = theirs;
        ours.sa_sigaction = on_usr2 as extern "C" fn(libc::c_int) as *const () as usize;
        ours.sa_flags = (theirs.sa_flags | libc::SA_RESTART) & !libc::SA_NODEFER;
        // Every other signal waits while a dump runs (but the faults, which must
        // reach their handlers): faulthandler's flags include SA_ONSTACK, so the dump
        // runs on the thread's alternate signal stack (8 KiB on the threads Rust
        // starts), and a handler nested in it ran on that stack too, whatever its
        // own flags, with a second signal frame (3 KiB and more with AVX-512 state).
        // regression (probe 352): a worker SIGSTOPped past --timeout and then
        // continued took the dump's SIGUSR2, its SIGTERM and the master's stop now
        // at once, nested on one thread: the stack overflowed and the worker died
        // by SIGSEGV, its streams left to look complete.
        ours.sa_mask = all_but_faults();
        libc::sigaction(libc::SIGUSR2, &ours, std::ptr::null_mut());
    }
    Ok(())
}

/// The reader thread: one log event per dump (up to each NUL). It takes no signal:
/// a SIGUSR2 handled here would write the dump into the pipe only this thread
/// drains, and wait for good once it was full (faulthandler then drops every later
/// dump of the worker, its own re-entry guard still set).
/// regression (review 359): with 100 deep threads (a 4 MB dump), a SIGUSR2 taken
/// by this thread hung it in the pipe's write.
fn read_dumps(read: OwnedFd) {
    // SAFETY: pthread_sigmask with a valid set; the old mask is not wanted.
    // libc: rustix has no pthread_sigmask outside its runtime module.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &all_but_faults(), std::ptr::null_mut());
    }
    let mut dump: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rustix::io::read(read.as_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, fd = read.as_raw_fd(), "stack dumps can no longer be read; later dumps are lost");
                return;
            }
        };
        let mut rest = &buf[..n];
        while let Some(end) = rest.iter().position(|&b| b == 0) {
            dump.extend_from_slice(&rest[..end]);
            log_dump(&dump);
            dump.clear();
            if let Some(f) = AFTER_DUMP.get() {
                f();
            }
            rest = &rest[end + 1..];
        }
        dump.extend_from_slice(rest);
        if dump.len() >= MAX_EVENT {
            log_dump(&dump);
            dump.clear();
        }
    }
}

fn log_dump(dump: &[u8]) {
    let text = String::from_utf8_lossy(dump);
    let text = text.trim_end();
    if !text.is_empty() {
        tracing::warn!(
            pid = std::process::id(),
            "Python stacks of this worker's threads:\n{text}"
        );
    }
}
