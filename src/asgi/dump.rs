//! `--timeout` and `--slow-log` for ASGI: the master's SIGUSR2 makes faulthandler dump
//! every thread's stack, which for the loop thread shows only the loop waiting; a stuck
//! request is a task suspended somewhere. So the loop also logs the stack of each of
//! its tasks: a signal handler of ours (chained after faulthandler's) writes an
//! eventfd the loop watches, and the loop formats the tasks' stacks itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use pyo3::prelude::*;

/// The eventfd the signal handler writes (-1: none).
static DUMP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_usr2(_sig: libc::c_int) {
    let fd = DUMP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) and errno access are async-signal-safe; errno is restored
        // for the code the signal interrupted.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, one.as_ptr().cast(), one.len());
            *libc::__errno_location() = errno;
        }
    }
}

/// Puts our SIGUSR2 handler under faulthandler's (when faulthandler has SIGUSR2, as in
/// a worker under the master) and returns the eventfd the loop must watch.
pub fn install(py: Python<'_>) -> PyResult<Option<OwnedFd>> {
    let faulthandler = py.import("faulthandler")?;
    let usr2 = py.import("signal")?.getattr("SIGUSR2")?;
    let registered: bool = faulthandler
        .call_method1("unregister", (&usr2,))?
        .extract()?;
    if !registered {
        return Ok(None);
    }
    let fd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .map_err(std::io::Error::from)?;
    DUMP_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    // libc: rustix sets signal handlers only in its experimental runtime module.
    // SAFETY: the handler only loads an atomic and calls write(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr2 as extern "C" fn(libc::c_int) as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    // faulthandler dumps the threads first, then calls ours (chain).
    let kw = pyo3::types::PyDict::new(py);
    kw.set_item("file", py.import("sys")?.getattr("stderr")?)?;
    kw.set_item("all_threads", true)?;
    kw.set_item("chain", true)?;
    faulthandler.call_method("register", (usr2,), Some(&kw))?;
    Ok(Some(fd))
}

/// Formats a task's stack down the chain of awaits (a suspended task's own stack shows
/// only its outermost coroutine; the app's frame that waits is further down).
const FORMAT: &std::ffi::CStr = cr#"import asyncio
def stacks(loop):
    out = []
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        coro = task.get_coro()
        name = task.get_name()
        try:
            # A request's task runs run.rs's serve(coro, done): done is the exchange's.
            name = coro.cr_frame.f_locals['done'].__self__._describe()
        except Exception:
            pass
        out.append('Task %s (most recent call last):\n' % name)
        while coro is not None:
            f = getattr(coro, 'cr_frame', None) or getattr(coro, 'gi_frame', None)
            if f is not None:
                out.append('  File "%s", line %d, in %s\n' % (f.f_code.co_filename, f.f_lineno, f.f_code.co_name))
            coro = getattr(coro, 'cr_await', None) or getattr(coro, 'gi_yieldfrom', None)
    return len(tasks), ''.join(out)
"#;

/// Formats the stack of every task on `event_loop` (the eventfd was readable).
pub fn tasks(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    fd: &OwnedFd,
) -> PyResult<(usize, String)> {
    let mut n = [0u8; 8];
    let _ = rustix::io::read(fd, &mut n);
    PyModule::from_code(py, FORMAT, c"postern_asgi_dump.py", c"postern_asgi_dump")?
        .call_method1("stacks", (event_loop,))?
        .extract()
}
