//! One HTTP request on the event loop: the `receive` and `send` callables the app
//! gets, the small awaitables they return, and the end of the response.
//!
//! Everything here runs on the loop thread with the GIL held, so nothing may block.
//! A sink with a socket of its own (uwsgi, SCGI: [`Sink::loop_writes`]) is written
//! from the loop with non-blocking sends; what the socket does not take waits in
//! [`super::io::Out`] while the loop watches the socket (`add_writer`), and `send`
//! waits only once too much waits (backpressure). Other sinks (FastCGI, whose
//! connection may carry other requests' records) write what they take at once with
//! [`Sink::try_write`], and the rest on an executor thread with the GIL released while
//! `send` waits on that write's future. A FastCGI body still arriving is polled on
//! the loop ([`BodyStream::poll_chunk`]: the server layer wakes the loop through an
//! eventfd); a spooled body is read from its file on the executor.
//!
//! A value that is ready (the whole body, a write the socket took) is returned by a
//! [`Ready`] awaitable: `await` gets it through `StopIteration`, with no asyncio
//! `Future` and no trip through the loop. Only a real wait creates a future.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{BorrowedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use super::scope::copy_dict;
use crate::codec::{Head, Protocol};
use crate::proto::asgi as proto_asgi;
use crate::proto::response::{self as resp, HeadStyle, HeaderError};
use crate::wsgi::response::HEAD_LIMIT;
use crate::wsgi::{traceback, AppError, Body, BodyStream, End, Sent, Served, Sink};

pyo3::create_exception!(
    postern,
    ClientDisconnected,
    pyo3::exceptions::PyOSError,
    "The front server closed the request's connection: the response cannot be sent."
);

/// The most a last write may hold to be sent from the loop thread when the socket
/// has room (see [`has_room`]): well under any socket's send buffer.
const QUICK_LAST: usize = 16 * 1024;
/// How long after a response ended at its Content-Length (the front server has it
/// whole, and may have closed the connection) a `receive()` waits for the app's last
/// `http.response.body` before it returns `http.disconnect`. Django's disconnect
/// listener must not cancel the view's streamed response while the code after its
/// last chunk runs; an app that awaits `receive()` before its last body must not wait
/// forever, holding its `--max-concurrency` place.
/// regression: such an app's `receive()` never returned, and the worker stopped taking
/// requests once those waits filled `--max-concurrency`.
const LENGTH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// True when `fd` can take bytes now (poll, zero timeout).
fn has_room(fd: Option<RawFd>) -> bool {
    let Some(fd) = fd else { return false };
    // SAFETY: the fd is the sink's socket, open while the sink is (held by the caller).
    crate::room::has_room(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// A request body read on an executor thread goes to the app in chunks this large.
const READ_CHUNK: usize = 256 * 1024;

/// An awaitable whose value is ready: `await` returns it at once, without an asyncio
/// `Future` or a pass through the loop. A type made with the C API, not a pyo3 class:
/// on CPython 3.10 and 3.11, `await` reaches its `am_send` slot straight from `SEND`,
/// with no `StopIteration` and no trampoline (a pyo3 class's `__await__` and `__next__`
/// cost about 140 instructions an await); from 3.12, `SEND` with `None` calls
/// `tp_iternext` instead, which gives the same value through a `StopIteration`. Python
/// sees `postern.Ready`, an iterator with `__await__`, `__next__`, `send` and `close`,
/// as before. It holds only postern's own message dicts (no cycle can go through it),
/// so it is not in the cyclic GC.
#[repr(C)]
struct ReadyObject {
    ob_base: pyo3::ffi::PyObject,
    /// The value (a strong reference), or null: `None`, or taken.
    value: *mut pyo3::ffi::PyObject,
    /// The exchange a `receive()` took `value` from (a strong reference), or null:
    /// a Ready thrown into or closed before its value was taken gives the message back
    /// to it ([`give_back`]), as a coroutine that never started would not have taken it.
    owner: *mut pyo3::ffi::PyObject,
}

/// The type of [`ReadyObject`], made once per process.
static READY_TYPE: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

thread_local! {
    /// The loop thread's window of "the app raised a connection error after the client
    /// went away" lines at warn: when it began, the lines at warn in it, the lines
    /// left at debug since the last one at warn.
    static DISCONNECT_RAISED: Cell<(Option<Instant>, u32, u64)> = const { Cell::new((None, 0, 0)) };
}

/// Lines at warn per window of [`DISCONNECT_RAISED`].
const DISCONNECT_RAISED_NAMED: u32 = 20;

/// How long one such window lasts.
const DISCONNECT_RAISED_WINDOW: Duration = Duration::from_secs(10);

/// Whether that line is at warn now (the first [`DISCONNECT_RAISED_NAMED`] of each
/// [`DISCONNECT_RAISED_WINDOW`]): `Some(lines left at debug since the last one)`.
// regression (hostile, session 17): one close of a connection carrying 64 requests
// logged 64 such WARN lines with their tracebacks; a client that kept doing so, 2 MiB
// of log in 20 s.
fn disconnect_raised_line() -> Option<u64> {
    DISCONNECT_RAISED.with(|c| {
        let (since, named, left) = c.get();
        let now = Instant::now();
        let (since, named) = match since {
            Some(t) if now.duration_since(t) < DISCONNECT_RAISED_WINDOW => (t, named),
            _ => (now, 0),
        };
        if named >= DISCONNECT_RAISED_NAMED {
            c.set((Some(since), named, left + 1));
            return None;
        }
        c.set((Some(since), named + 1, 0));
        Some(left)
    })
}

fn ready_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    use pyo3::ffi;
    READY_TYPE
        .get_or_try_init(py, || {
            // CPython keeps pointers to these (the name, the methods): made once,
            // leaked with the type, which lives as long as the process.
            let methods: &'static mut [ffi::PyMethodDef] = Box::leak(Box::new([
                ffi::PyMethodDef {
                    ml_name: c"send".as_ptr(),
                    ml_meth: ffi::PyMethodDefPointer {
                        PyCFunction: ready_send_method,
                    },
                    ml_flags: ffi::METH_O,
                    ml_doc: c"Like __next__: the value, in StopIteration.".as_ptr(),
                },
                ffi::PyMethodDef {
                    ml_name: c"throw".as_ptr(),
                    ml_meth: ffi::PyMethodDefPointer {
                        PyCFunction: ready_throw,
                    },
                    ml_flags: ffi::METH_VARARGS,
                    ml_doc: c"Drops the value and raises the exception given.".as_ptr(),
                },
                ffi::PyMethodDef {
                    ml_name: c"close".as_ptr(),
                    ml_meth: ffi::PyMethodDefPointer {
                        PyCFunction: ready_close,
                    },
                    ml_flags: ffi::METH_NOARGS,
                    ml_doc: c"Drops the value.".as_ptr(),
                },
                ffi::PyMethodDef::zeroed(),
            ]));
            let slot = |slot, pfunc: *mut std::ffi::c_void| ffi::PyType_Slot { slot, pfunc };
            let slots: &'static mut [ffi::PyType_Slot] = Box::leak(Box::new([
                slot(ffi::Py_am_await, ready_self as *mut _),
                slot(ffi::Py_am_send, ready_am_send as *mut _),
                slot(ffi::Py_tp_iter, ready_self as *mut _),
                slot(ffi::Py_tp_iternext, ready_next as *mut _),
                slot(ffi::Py_tp_dealloc, ready_dealloc as *mut _),
                slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
                slot(
                    ffi::Py_tp_doc,
                    c"A value that is ready: await returns it at once.".as_ptr() as *mut _,
                ),
                ffi::PyType_Slot::default(),
            ]));
            let spec: &'static mut ffi::PyType_Spec = Box::leak(Box::new(ffi::PyType_Spec {
                name: c"postern.Ready".as_ptr(),
                basicsize: std::mem::size_of::<ReadyObject>() as std::ffi::c_int,
                itemsize: 0,
                flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION)
                    as std::ffi::c_uint,
                slots: slots.as_mut_ptr(),
            }));
            // SAFETY: with the GIL held; the spec and what it points to live forever;
            // the result is a new reference to a type, or NULL with an exception.
            unsafe {
                Ok::<_, PyErr>(
                    Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))?
                        .cast_into::<pyo3::types::PyType>()?
                        .unbind(),
                )
            }
        })
        .map(|t| t.bind(py))
}

/// A [`ReadyObject`] with `value` (`None`: it gives `None`).
pub fn ready(py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<Bound<'_, PyAny>> {
    let tp = ready_type(py)?;
    // SAFETY: with the GIL held; `tp` is the Ready type, whose instances are
    // `ReadyObject`s (its basicsize), zeroed by the allocation; `value`'s reference
    // moves into the object, which releases it (`ready_dealloc`).
    unsafe {
        let o = pyo3::ffi::PyType_GenericAlloc(tp.as_type_ptr(), 0);
        let o = Bound::from_owned_ptr_or_err(py, o)?;
        (*o.as_ptr().cast::<ReadyObject>()).value =
            value.map_or(std::ptr::null_mut(), Py::into_ptr);
        Ok(o)
    }
}

/// A [`ReadyObject`] with the message `receive()` took from `owner`'s request.
fn ready_from<'py>(
    owner: &Bound<'py, Exchange>,
    value: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = ready(owner.py(), Some(value.unbind()))?;
    // SAFETY: `o` is a ReadyObject just made, its `owner` null; the new reference to
    // the exchange moves into it (released by `ready_dealloc`).
    unsafe {
        (*o.as_ptr().cast::<ReadyObject>()).owner = owner.clone().into_any().into_ptr();
    }
    Ok(o)
}

/// `throw()` or `close()` of a Ready whose value was not taken: a `receive()` message
/// goes back to its request, for the next `receive()` (a task made of `receive()` and
/// cancelled before its first step must not lose the body).
///
/// # Safety
/// With the GIL held; `o` a `ReadyObject`.
unsafe fn give_back(o: *mut pyo3::ffi::PyObject) {
    // SAFETY: the caller's.
    unsafe {
        let r = &mut *o.cast::<ReadyObject>();
        let value = std::mem::replace(&mut r.value, std::ptr::null_mut());
        if value.is_null() {
            return;
        }
        let py = Python::assume_attached();
        let value = Bound::from_owned_ptr(py, value);
        if r.owner.is_null() {
            return;
        }
        let owner = Bound::from_borrowed_ptr(py, r.owner);
        if let Ok(ex) = owner.cast::<Exchange>() {
            if let Ok(mut me) = ex.try_borrow_mut() {
                me.given_back = Some(value.unbind());
            }
        }
    }
}

/// Takes the value out of `o` (a [`ReadyObject`]): a strong reference, `None` if none.
///
/// # Safety
/// With the GIL held; `o` a `ReadyObject`.
unsafe fn ready_take(o: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject {
    // SAFETY: the caller's.
    unsafe {
        let v = std::mem::replace(&mut (*o.cast::<ReadyObject>()).value, std::ptr::null_mut());
        if v.is_null() {
            pyo3::ffi::Py_NewRef(pyo3::ffi::Py_None())
        } else {
            v
        }
    }
}

/// `__await__` and `__iter__`: itself.
unsafe extern "C" fn ready_self(o: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `o` valid.
    unsafe { pyo3::ffi::Py_NewRef(o) }
}

/// What `await` calls (`PyIter_Send`): returns the value at once.
unsafe extern "C" fn ready_am_send(
    o: *mut pyo3::ffi::PyObject,
    _arg: *mut pyo3::ffi::PyObject,
    result: *mut *mut pyo3::ffi::PyObject,
) -> pyo3::ffi::PySendResult {
    // SAFETY: CPython calls it with the GIL held, `o` a Ready, `result` writable.
    unsafe { *result = ready_take(o) };
    pyo3::ffi::PySendResult::PYGEN_RETURN
}

/// `__next__`: the value, in a `StopIteration` (none for `None`).
unsafe extern "C" fn ready_next(o: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject {
    use pyo3::ffi;
    // SAFETY: CPython calls it with the GIL held and `o` a Ready.
    unsafe {
        let v = ready_take(o);
        if v != ffi::Py_None() {
            // An instance made first, so that a value that is itself a tuple is not
            // taken for the exception's arguments.
            let e = ffi::PyObject_CallOneArg(ffi::PyExc_StopIteration, v);
            if !e.is_null() {
                ffi::PyErr_SetObject(ffi::PyExc_StopIteration, e);
                ffi::Py_DECREF(e);
            }
        }
        ffi::Py_DECREF(v);
        std::ptr::null_mut()
    }
}

/// `send(value)`: as `__next__`.
unsafe extern "C" fn ready_send_method(
    o: *mut pyo3::ffi::PyObject,
    _arg: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: as for `ready_next`.
    unsafe {
        let r = ready_next(o);
        if r.is_null() && pyo3::ffi::PyErr_Occurred().is_null() {
            pyo3::ffi::PyErr_SetNone(pyo3::ffi::PyExc_StopIteration);
        }
        r
    }
}

/// `throw(exception)` (or `throw(type[, value[, traceback]])`): drops the value and
/// raises the exception, as a coroutine that has not started does. With `send` and
/// `close`, it makes a Ready a `collections.abc.Coroutine`, which is what
/// `asyncio.iscoroutine` asks of what `asyncio.create_task`,
/// `asyncio.run_coroutine_threadsafe` and anyio's `start_soon` are given: an app may
/// hand them `send(message)` or `receive()` as it would a coroutine.
unsafe extern "C" fn ready_throw(
    o: *mut pyo3::ffi::PyObject,
    args: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held, `o` a Ready and `args` a tuple.
    unsafe {
        give_back(o);
        set_thrown(args);
        std::ptr::null_mut()
    }
}

/// Sets the exception `throw(*args)` gives (`throw(exception)` or `throw(type[, value[,
/// traceback]])`), or a `TypeError` for arguments that are none of these.
///
/// # Safety
/// With the GIL held; `args` a tuple.
pub(super) unsafe fn set_thrown(args: *mut pyo3::ffi::PyObject) {
    use pyo3::ffi;
    // SAFETY: the caller's.
    unsafe {
        let n = ffi::PyTuple_Size(args);
        let first = if n >= 1 {
            ffi::PyTuple_GetItem(args, 0)
        } else {
            std::ptr::null_mut()
        };
        if first.is_null() || n > 3 {
            ffi::PyErr_Clear();
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"throw() takes an exception (or a type, a value and a traceback)".as_ptr(),
            );
        } else if ffi::PyExceptionInstance_Check(first) != 0 {
            ffi::PyErr_SetObject(ffi::Py_TYPE(first).cast(), first);
        } else if ffi::PyExceptionClass_Check(first) != 0 {
            let value = if n >= 2 {
                ffi::PyTuple_GetItem(args, 1)
            } else {
                ffi::Py_None()
            };
            ffi::PyErr_SetObject(first, value);
        } else {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"exceptions must be classes or instances deriving from BaseException".as_ptr(),
            );
        }
    }
}

/// `close()`: drops the value (a `receive()` message goes back to its request).
unsafe extern "C" fn ready_close(
    o: *mut pyo3::ffi::PyObject,
    _none: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `o` a Ready.
    unsafe {
        give_back(o);
        pyo3::ffi::Py_NewRef(pyo3::ffi::Py_None())
    }
}

unsafe extern "C" fn ready_dealloc(o: *mut pyo3::ffi::PyObject) {
    use pyo3::ffi;
    // SAFETY: CPython calls it with the GIL held, once, when `o`'s count is 0; a heap
    // type's instance holds a reference to its type, released last.
    unsafe {
        let tp = ffi::Py_TYPE(o);
        // A receive() dropped unawaited gives its message back, as an `async def
        // receive` never started would not have taken it (give_back leaves `value` null).
        give_back(o);
        ffi::Py_XDECREF((*o.cast::<ReadyObject>()).value);
        ffi::Py_XDECREF((*o.cast::<ReadyObject>()).owner);
        if let Some(free) = (*tp).tp_free {
            free(o.cast());
        }
        ffi::Py_DECREF(tp.cast());
    }
}

/// `receive` and `send` as the app gets them: built-in methods bound to the exchange
/// (`METH_NOARGS` and `METH_O`), which CPython calls through vectorcall: no argument
/// tuple and no class `__call__` trampoline per call, as a class instance would cost
/// (about 0.4k instructions a call). The exchange belongs to the loop's thread, so a
/// call from elsewhere only makes a coroutine that does the work once awaited on the
/// loop ([`deferred`]), as calling any ASGI server's `async def send` would; awaited
/// on another thread's loop, it is refused with an error the app can act on, before
/// the exchange is touched.
pub fn channel<'py>(
    exchange: &Bound<'py, Exchange>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    ON_LOOP.with(|o| o.set(true));
    let py = exchange.py();
    Ok((
        builtin(py, &RECEIVE, exchange.as_any())?,
        builtin(py, &SEND, exchange.as_any())?,
    ))
}

/// A built-in function made from `def`, bound to `slf` (its first argument).
pub(super) fn builtin<'py>(
    py: Python<'py>,
    def: &'static MethodDef,
    slf: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: with the GIL held; `def` is static and never changed; the result is a
    // new reference (holding `slf`) or NULL with an exception.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyCFunction_NewEx(def.0.get(), slf.as_ptr(), std::ptr::null_mut()),
        )
    }
}

thread_local! {
    /// This thread made request channels ([`channel`]): it is the loop's (one per
    /// worker process).
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// A method definition CPython reads (never writes) through a `*mut`.
pub(super) struct MethodDef(std::cell::UnsafeCell<pyo3::ffi::PyMethodDef>);

impl MethodDef {
    pub(super) const fn new(def: pyo3::ffi::PyMethodDef) -> MethodDef {
        MethodDef(std::cell::UnsafeCell::new(def))
    }
}

// SAFETY: never written after it is made; CPython only reads it (with the GIL held).
unsafe impl Sync for MethodDef {}

static RECEIVE: MethodDef = MethodDef(std::cell::UnsafeCell::new(pyo3::ffi::PyMethodDef {
    ml_name: c"receive".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunction: receive_call,
    },
    ml_flags: pyo3::ffi::METH_NOARGS,
    ml_doc: c"The ASGI receive(): the next http.request or http.disconnect message.".as_ptr(),
}));

static SEND: MethodDef = MethodDef(std::cell::UnsafeCell::new(pyo3::ffi::PyMethodDef {
    ml_name: c"send".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunction: send_call,
    },
    ml_flags: pyo3::ffi::METH_O,
    ml_doc: c"The ASGI send(message).".as_ptr(),
}));

/// `receive()`: `slf` is the exchange. Called off the loop's thread, it does nothing
/// yet and returns a coroutine that receives once awaited on the loop (see
/// [`deferred`]).
unsafe extern "C" fn receive_call(
    slf: *mut pyo3::ffi::PyObject,
    _none: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `slf` the exchange it was bound to.
    unsafe {
        if !ON_LOOP.with(Cell::get) {
            return deferred(slf, &RECEIVE_ON_LOOP, None);
        }
        on_loop(slf, Exchange::receive)
    }
}

/// `send(message)`: `slf` is the exchange, `message` borrowed for the call. Off the
/// loop's thread, as [`receive_call`].
unsafe extern "C" fn send_call(
    slf: *mut pyo3::ffi::PyObject,
    message: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: as for `receive_call`; `message` is a valid borrowed reference.
    unsafe {
        if !ON_LOOP.with(Cell::get) {
            return deferred(slf, &SEND_ON_LOOP, Some(message));
        }
        send_on_loop(slf, message)
    }
}

/// What a deferred `receive()` calls on the loop.
unsafe extern "C" fn receive_on_loop(
    slf: *mut pyo3::ffi::PyObject,
    _none: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: as for `receive_call`.
    unsafe { on_loop(slf, Exchange::receive) }
}

/// What a deferred `send(message)` calls on the loop.
unsafe extern "C" fn send_on_loop(
    slf: *mut pyo3::ffi::PyObject,
    message: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: as for `send_call`.
    unsafe {
        on_loop(slf, |ex| {
            let message = Bound::from_borrowed_ptr(ex.py(), message);
            Exchange::send(ex, &message)
        })
    }
}

static RECEIVE_ON_LOOP: MethodDef = MethodDef(std::cell::UnsafeCell::new(pyo3::ffi::PyMethodDef {
    ml_name: c"receive".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunction: receive_on_loop,
    },
    ml_flags: pyo3::ffi::METH_NOARGS,
    ml_doc: c"receive() on the loop's thread.".as_ptr(),
}));

static SEND_ON_LOOP: MethodDef = MethodDef(std::cell::UnsafeCell::new(pyo3::ffi::PyMethodDef {
    ml_name: c"send".as_ptr(),
    ml_meth: pyo3::ffi::PyMethodDefPointer {
        PyCFunction: send_on_loop,
    },
    ml_flags: pyo3::ffi::METH_O,
    ml_doc: c"send(message) on the loop's thread.".as_ptr(),
}));

/// postern's Python helpers, made once per process.
struct Helpers {
    /// `receive(call)` and `send(call, message)`: coroutine functions that call
    /// `call(*args)` when first awaited, and await what it returns. Named as the
    /// app's functions are, so that one never awaited is reported as "coroutine
    /// 'receive' was never awaited", as with any ASGI server's.
    deferred_receive: Py<PyAny>,
    deferred_send: Py<PyAny>,
    /// `Waiting`: the future `send` and `receive` return when they must wait.
    waiting: Py<PyAny>,
    /// `settle(fut)`: sets a future's result `None` unless it is done (cancelled).
    settle: Py<PyAny>,
}

static HELPERS: pyo3::sync::PyOnceLock<Helpers> = pyo3::sync::PyOnceLock::new();

/// `Waiting` is an asyncio future that is a coroutine as well (`send`, `throw`,
/// `close`: a `collections.abc.Coroutine`, as a [`Ready`] is), so that whatever an
/// app does with what `send()` or `receive()` returned works as with any ASGI
/// server's coroutine: `await` it, `asyncio.create_task` it (the task waits on the
/// future itself), `asyncio.wait_for`, `gather` or `ensure_future` it (a future:
/// taken as it is), or cancel the task awaiting it (the future is cancelled).
/// `throw` and `close` cancel it too, as they end a coroutine's wait: a task made of
/// it and cancelled before it ran throws into it, and the exchange must then give
/// what it waited for (a body chunk) to the next `receive()`, not to this future.
const HELPERS_CODE: &std::ffi::CStr = c"import asyncio

async def receive(call):
    return await call()

async def send(call, message):
    return await call(message)

def settle(fut):
    if not fut.done():
        fut.set_result(None)

class Waiting(asyncio.Future):
    __slots__ = ()

    def send(self, value):
        if not self.done():
            self._asyncio_future_blocking = True
            return self
        raise StopIteration(self.result())

    def throw(self, typ, val=None, tb=None):
        self.cancel()
        if val is None:
            raise typ
        raise val.with_traceback(tb) if tb is not None else val

    def close(self):
        self.cancel()
";

fn helpers(py: Python<'_>) -> PyResult<&Helpers> {
    HELPERS.get_or_try_init(py, || {
        let m = PyModule::from_code(
            py,
            HELPERS_CODE,
            c"postern/asgi/awaitables.py",
            c"_postern_awaitables",
        )?;
        Ok(Helpers {
            deferred_receive: m.getattr("receive")?.unbind(),
            deferred_send: m.getattr("send")?.unbind(),
            waiting: m.getattr("Waiting")?.unbind(),
            settle: m.getattr("settle")?.unbind(),
        })
    })
}

/// A maker of [`Helpers::waiting`] futures on `event_loop`, for `Ctx::create_future`.
pub fn waiting_maker<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "loop"), event_loop)?;
    py.import(intern!(py, "functools"))?
        .getattr(intern!(py, "partial"))?
        .call((helpers(py)?.waiting.bind(py),), Some(&kwargs))
}

/// `receive()` or `send(message)` called off the loop's thread (an executor thread of
/// the app's, asgiref's `async_to_sync`, a2wsgi, or
/// `asyncio.run_coroutine_threadsafe(send(message), loop)` as with any ASGI server,
/// whose `send` and `receive` are coroutine functions: calling one only makes the
/// coroutine): nothing of the exchange is touched here; the coroutine returned calls
/// `def` when it is awaited, which must then be on the loop's thread.
///
/// # Safety
/// With the GIL held, `slf` the exchange, `message` a borrowed reference or none.
unsafe fn deferred(
    slf: *mut pyo3::ffi::PyObject,
    def: &'static MethodDef,
    message: Option<*mut pyo3::ffi::PyObject>,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: the caller (CPython) holds the GIL.
    let py = unsafe { Python::assume_attached() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `slf` and `message` are valid references (the caller's promise),
        // borrowed for the call; only their counts are touched on this thread.
        let (slf, message) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf),
                message.map(|m| Bound::from_borrowed_ptr(py, m)),
            )
        };
        let call = builtin(py, def, &slf)?;
        let h = helpers(py)?;
        match message {
            None => h.deferred_receive.bind(py).call1((call,)),
            Some(m) => h.deferred_send.bind(py).call1((call, m)),
        }
    }));
    let err = match r {
        Ok(Ok(p)) => return p.into_ptr(),
        Ok(Err(e)) => e,
        Err(_) => PyRuntimeError::new_err(
            "internal error in postern's send() or receive() (a panic; see the log)",
        ),
    };
    err.restore(py);
    std::ptr::null_mut()
}

/// Runs `f` with the exchange `slf` on the loop's thread (else a `RuntimeError`),
/// and hands its result to CPython: a new reference, or NULL with the exception set
/// (a panic becomes one too: it must not unwind into CPython).
///
/// # Safety
/// With the GIL held, `slf` an `Exchange` (what [`channel`] bound).
unsafe fn on_loop(
    slf: *mut pyo3::ffi::PyObject,
    f: impl for<'py> FnOnce(&Bound<'py, Exchange>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: the caller (CPython) holds the GIL.
    let py = unsafe { Python::assume_attached() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if !ON_LOOP.with(Cell::get) {
            return Err(PyRuntimeError::new_err(
                "send() or receive() awaited off the worker's event loop (on another thread's loop?): await it on the loop that runs the request, e.g. asyncio.run_coroutine_threadsafe(send(message), loop) from another thread",
            ));
        }
        // SAFETY: `slf` is the exchange (the caller's promise), borrowed for the call.
        let ex = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Exchange>() };
        // Python code that runs while postern handles a send() or receive() of this
        // request (a header iterator, a `__del__`, a weakref callback) and calls one
        // again: refused here, not a panic at the first borrow inside.
        if ex.try_borrow_mut().is_err() {
            return Err(PyRuntimeError::new_err(
                "send() or receive() called while postern was still handling a send() or receive() of the same request (from a header iterator, a __del__ or a callback it ran): call it after that one returns",
            ));
        }
        f(&ex).map(Bound::into_ptr)
    }));
    let err = match r {
        Ok(Ok(p)) => return p,
        Ok(Err(e)) => e,
        Err(_) => PyRuntimeError::new_err(
            "internal error in postern's send() or receive() (a panic; see the log)",
        ),
    };
    err.restore(py);
    std::ptr::null_mut()
}

pub use super::io::GoneQueue;

/// The loop's bookkeeping when a request is over, called with its slot.
pub type Ended = Box<dyn Fn(Python<'_>, usize)>;

/// What every request of one loop shares: the loop's methods, looked up once.
pub struct Ctx {
    pub event_loop: Py<PyAny>,
    pub create_future: Py<PyAny>,
    pub run_in_executor: Py<PyAny>,
    /// The executor of what still blocks (FastCGI writes the connection did not take
    /// at once, reads of spooled bodies): threads of their own, so a front server that
    /// stops reading never takes the default executor's threads (`--threads`, the
    /// app's sync code) from the app.
    pub io_executor: Py<PyAny>,
    pub add_reader: Py<PyAny>,
    pub remove_reader: Py<PyAny>,
    /// The tasks on the scoreboard (`--timeout`, `/status`, metrics).
    pub watch: super::watch::Watch,
    /// Called with the slot when a request's task has ended (the loop's bookkeeping),
    /// from Rust: no Python call per request.
    pub ended: std::cell::OnceCell<Ended>,
    /// `Ready(None)`: `await send(...)` that completed at once; shared (it yields
    /// `None` however often it is awaited).
    pub done: Py<PyAny>,
    /// `functools.partial`.
    pub partial: Py<PyAny>,
    /// Requests answered since the loop started.
    pub answered: Cell<u64>,
    pub gone: Arc<GoneQueue>,
    /// The requests waiting for word from [`GoneQueue`], by id.
    pub gone_waiting: std::cell::RefCell<std::collections::HashMap<u64, Py<Exchange>>>,
    /// The worker is at `--max-concurrency` and the loop has stopped looking at the
    /// acceptor, which reads kept FastCGI connections: those [`Ctx::gone_waiting`]
    /// are peeked at by the loop meanwhile ([`peek_kept`]).
    pub at_cap: Cell<bool>,
    pub next_id: Cell<u64>,
    /// The worker's stop: whether postern itself cancelled the requests' tasks at
    /// `--graceful-timeout` (a cancelled task is then not the app's failure).
    pub stop: Arc<super::stop::Stop>,
    /// `--timeout` (under a master, which enforces it): a task that runs this long
    /// after it began, its response complete, gets one warning ([`Exchange::responded`]).
    pub timeout: Option<Duration>,
    /// The tasks running on after their complete response, by start order: when each
    /// began, and its span (to name it).
    pub after: RefCell<BTreeMap<usize, (Instant, crate::logging::RequestSpan)>>,
    /// When the timer that looks at [`Ctx::after`] is due, if one is set.
    pub after_due: Cell<Option<Instant>>,
}

/// The request body, as `receive` hands it out.
enum BodyState {
    /// Not handed out yet.
    Waiting(Body),
    /// Read in chunks on the executor.
    Reading(Py<ReadJob>),
    /// Taken on the loop as it arrives (FastCGI STDIN): `wake` is how the server
    /// layer says there is more ([`super::io::BodyWakes`]).
    Polled(Box<dyn BodyStream>, Arc<dyn Fn() + Send + Sync>),
    /// Handed out whole: `receive` now waits for the disconnect.
    Done,
}

/// The loop's [`Ctx`] as an exchange holds it.
///
/// An exchange is a Python object, so its last reference can go on any thread that
/// holds the GIL: an executor thread whose cyclic GC collects a request's leftovers
/// (Datasette's SQL threads did, on one request in three), or an app that hands
/// `send` to a thread. A class pyo3 keeps to one thread is then leaked instead of
/// dropped, with a raw traceback on stderr each time; so the exchange is an ordinary
/// class and only this field needs the reasoning below.
struct LoopCtx(Rc<Ctx>);

// SAFETY: the `Rc`'s count and the `Ctx` are only touched with the GIL held, which
// serialises them (CPython 3.11 always has a GIL; a free-threaded build would need an
// `Arc` and `Sync` fields here): an exchange is made, cloned from and used by the
// loop's Rust code (called from Python, never inside `Python::detach`, whose closures
// must be `Send`, which `Rc` is not), every call from Python goes through `on_loop`,
// which refuses other threads before the exchange is touched, and a drop on another
// thread comes from CPython's deallocation, with the GIL held. That drop only lowers
// the count: the loop's driver holds its own `Rc<Ctx>` for as long as the worker runs.
unsafe impl Send for LoopCtx {}
// SAFETY: as for `Send`: shared references are only used with the GIL held.
unsafe impl Sync for LoopCtx {}

impl std::ops::Deref for LoopCtx {
    type Target = Rc<Ctx>;
    fn deref(&self) -> &Rc<Ctx> {
        &self.0
    }
}

/// One request: its body for `receive`, its response for `send`.
#[pyclass(module = "postern", name = "HttpExchange", freelist = 64)]
pub struct Exchange {
    ctx: LoopCtx,
    span: crate::logging::RequestSpan,
    head: Head,
    request_id: crate::logging::RequestId,
    protocol: Protocol,
    slot: usize,
    /// `None` while an executor thread writes with it, or once finished.
    sink: Option<Box<dyn Sink>>,
    style: HeadStyle,
    is_head: bool,
    /// The connection, when it carries only this request (uwsgi, SCGI, FastCGI
    /// without keep-conn): its close is the client gone.
    peer_fd: Option<RawFd>,
    /// The connection to look at for the front server's close while a `receive()`
    /// waits: `peer_fd`, or a kept FastCGI connection while the worker is at
    /// `--max-concurrency` (the acceptor, its reader, is not looked at then).
    peek_fd: Option<RawFd>,
    // The response, as the app sends it.
    started: bool,
    code: u16,
    /// The head as far as `http.response.start` knows it: the status line (or
    /// `Status:`) and the app's headers that go out, checked and encoded as
    /// `Name: value\r\n` lines; [`Exchange::head_bytes`] ends it and hands it out.
    response_head: Vec<u8>,
    content_length: Option<u64>,
    head_sent: bool,
    body_sent: u64,
    /// The app sent its last body (or the path to send): the response is whole once
    /// what is in flight is written.
    complete: bool,
    /// The response ended at its Content-Length, by a body send with `more_body`
    /// True: its last `http.response.body` is still to come, and succeeds (the front
    /// server may have closed the connection by then: it had the whole response).
    ended_at_length: bool,
    /// The timer of [`LENGTH_GRACE`] after a response ended at its Content-Length
    /// (cancelled by the app's last body), and whether it ran out.
    length_grace: Option<Py<PyAny>>,
    grace_over: bool,
    /// When that timer was set (the response sent whole).
    ended_at: Option<Instant>,
    /// A `send()` past [`LENGTH_GRACE`] after such an end raised [`PAST_END`]: what
    /// the app raises for it is not its failure.
    sent_past_end: bool,
    /// A job on the executor holds the sink.
    busy: bool,
    /// Cuts the response off while a job holds its sink ([`Sink::cutter`]): taken
    /// from the sink as its first job begins, used by the stop's cut-off.
    cutter: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// The futures of the other `send()`s whose bytes that job writes (done with it).
    job_extra: Vec<Py<PyAny>>,
    /// The app's `send()` futures that job completes: settled by
    /// [`Exchange::unawaited`] once nobody awaits them, as the queued ones are (kept
    /// pending, the first send never awaited waited for a write that a reader that
    /// reads nothing never lets end).
    job_futs: Vec<SendFut>,
    /// The front server closed the connection while that job wrote: the client gone
    /// only if the response is not whole once the job has ended.
    closed_in_job: bool,
    /// Body sent while a write was still on the executor (the app cancelled that
    /// `send()`, or did not wait for it: `gather(send(a), send(b))`): written when
    /// that write has ended, in call order.
    queued: Option<Queued>,
    gone: bool,
    /// Gone because the front server read nothing for `--read-timeout`: postern
    /// closed ([`End::Stalled`]; `send()` says so).
    stalled: bool,
    /// Gone because postern closed the connection while the body came, for this
    /// reason ([`End::Closed`]).
    closed_by: Option<crate::wsgi::input::ClosedBy>,
    /// The response was ended (the sink finished); what it sent.
    served: Option<Served>,
    app_error: Option<AppError>,
    task_over: bool,
    /// The monitor and the loop were told the request is over.
    released: bool,
    /// When the task began (for the warning of work past `--timeout` after the
    /// response), and whether it left its line at its complete response.
    begun: Instant,
    left_line: bool,
    /// The stop cut its task off at its own `--timeout` (its access line says so).
    timed_out: bool,
    /// The stop cut its task off before its response started: postern's 503 (its
    /// access line says so).
    stop_answered: bool,
    /// Postern cancelled the task at `--graceful-timeout` (not the app's failure).
    cut_at_stop: bool,
    /// Its task outlived the cut-off's grace and was named and ended without it
    /// (`_cut_unended`): its own end, if it comes, says nothing more.
    abandoned: bool,
    body: BodyState,
    /// `receive()` futures waiting for `http.disconnect`.
    waiters: Vec<Py<PyAny>>,
    /// A body read runs on the executor.
    read_in_flight: bool,
    /// The receive() futures waiting for body chunks, oldest first: an app may have
    /// several pending at once (`gather(receive(), receive())`); each gets the next
    /// chunk in turn.
    read_waiters: VecDeque<Py<PyAny>>,
    /// A chunk read that no receive() took yet (its caller was cancelled).
    read_kept: Option<Py<PyAny>>,
    /// A message a `receive()` took and its Ready gave back, unread ([`give_back`]):
    /// the next `receive()` returns it first.
    given_back: Option<Py<PyAny>>,
    watching: bool,
    /// Bytes came after the complete request (dropped; SCGI: warned about once).
    extra_input: bool,
    /// Registered with the sink's `notify_gone` under this id.
    gone_id: Option<u64>,
    /// `watch` found the sink on the executor (a write in flight): it registers with
    /// `notify_gone` once the sink is back (`_job_done`).
    watch_later: bool,
    /// The connection is watched for the front server's close while the response
    /// streams (armed at its first body with more to come), so a `send()` after the
    /// client left raises at once, not once the kernel refuses a write.
    stream_watched: bool,
    trailers_said: bool,
    overflowed: bool,
    /// The sink's socket and write timeout when the loop writes the response itself
    /// ([`Sink::loop_writes`]): what the socket does not take waits in `out`.
    loop_w: Option<(RawFd, std::time::Duration)>,
    out: super::io::Out,
    /// The loop watches the socket for room (`add_writer`).
    writing: bool,
    /// A write is due at the end of this loop iteration (`call_soon`).
    flush_soon: bool,
    /// The `send()`s waiting for the socket to take what waits (backpressure), in
    /// call order: concurrent sends (`gather(send(a), send(b))`) each wait for their
    /// own message.
    send_waiters: VecDeque<SendWait>,
    /// The `--read-timeout` timer of a wait for room, and when bytes last left.
    write_timer: Option<Py<PyAny>>,
    last_progress: std::time::Instant,
    /// Registered for body wake-ups under this id ([`super::io::LoopIo`]).
    body_id: Option<u64>,
    /// Every later `send()` raises this: the response was answered or cut off in the
    /// app's place (a body over --max-body, sends the app did not wait for).
    send_refused: Option<&'static str>,
    /// Postern answered 400 for the front server's input (a FastCGI STDIN short of
    /// CONTENT_LENGTH), or 503 for a body it dropped
    /// ([`Exchange::answer_input`]): what the app raises on the
    /// http.disconnect it got then is the input's doing, not its failure.
    input_refused: bool,
}

/// Body bytes waiting for the executor's write in flight to end.
struct Queued {
    data: Vec<u8>,
    /// The response is whole with them.
    last: bool,
    /// The `send()`s whose bytes these are, in order, and how many each sent.
    futs: Vec<(SendFut, usize)>,
}

/// A `send()` waiting for room: its message is `start..end` of what
/// [`super::io::Out`] was pushed.
struct SendWait {
    fut: SendFut,
    start: u64,
    end: u64,
}

/// The future a `send()` returned, and whether someone awaits it.
struct SendFut {
    fut: Py<PyAny>,
    /// The loop step ([`STEP`]) the send() was called in.
    step: u64,
    /// Seen awaited once (stays so: a cancelled one is no longer pending).
    awaited: bool,
}

impl SendFut {
    /// `lio`: the loop's, to count the step's end.
    fn new(fut: &Bound<'_, PyAny>, lio: &super::io::LoopIo) -> PyResult<SendFut> {
        Ok(SendFut {
            fut: fut.clone().unbind(),
            step: step_now(fut.py(), lio)?,
            awaited: false,
        })
    }

    /// Who waits for it: someone, when it was awaited (a task's wake-up, `gather`'s
    /// or `wait_for`'s callback is on it) or the app's step that called send() has
    /// not ended yet (`asyncio.gather(send(a), send(b))` awaits them only once both
    /// are called); nobody, when it is done (cancelled) or its step ended without
    /// anyone awaiting it (a forgotten `await`).
    fn wait(&mut self, py: Python<'_>) -> Wait {
        if !pending(py, &self.fut) {
            return Wait::Done;
        }
        if self.awaited || self.step == STEP.with(Cell::get) {
            return Wait::Awaited;
        }
        // Not sticky in the step itself: a send() called in it is looked at again
        // by the sends after it, and a step's end is what tells a forgotten one.
        self.awaited = awaited(py, &self.fut);
        if self.awaited {
            Wait::Awaited
        } else {
            Wait::Forgotten
        }
    }
}

/// What [`SendFut::wait`] found.
enum Wait {
    /// Someone waits for the send's bytes to go: kept in the queue.
    Awaited,
    /// Done (the app cancelled it): nothing to answer.
    Done,
    /// Never awaited, its step is over: settled at once and dropped from the queue
    /// (its bytes still go, counted as not waited for by [`Exchange::unawaited`]).
    Forgotten,
}

/// Settles a send()'s future nobody awaited (its step ended without a callback on
/// it), so that it need not be kept: an app that awaits it later goes on at once.
/// False when it could not be settled (it stays queued, and is tried again by the
/// next send: dropped pending, an app that awaits it later would wait forever).
fn settle_forgotten(py: Python<'_>, f: &Py<PyAny>) -> bool {
    match f
        .bind(py)
        .call_method1(intern!(py, "set_result"), (py.None(),))
    {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "a send() nobody awaited could not be settled yet");
            !pending(py, f)
        }
    }
}

thread_local! {
    /// The loop's steps since the loop thread began, as far as a send() needs them:
    /// [`StepEnded`] counts one once a step that made a send() future has ended.
    static STEP: Cell<u64> = const { Cell::new(0) };
    /// A [`StepEnded`] is scheduled.
    static STEP_DUE: Cell<bool> = const { Cell::new(false) };
}

/// The current loop step; the next [`StepEnded`] (`call_soon`: it runs after the
/// callback running now, the app's task step) ends it.
fn step_now(py: Python<'_>, lio: &super::io::LoopIo) -> PyResult<u64> {
    if !STEP_DUE.with(Cell::get) {
        lio.call_soon.bind(py).call1((StepEnded,))?;
        STEP_DUE.with(|d| d.set(true));
    }
    Ok(STEP.with(Cell::get))
}

/// Ends the loop step counted by [`STEP`].
#[pyclass(module = "postern", name = "StepEnded", frozen)]
struct StepEnded;

#[pymethods]
impl StepEnded {
    fn __call__(&self) {
        step_over();
    }
}

/// The step that made the last send() futures is over: called by [`StepEnded`], and
/// by a loop callback that is no task's step and looks at the sends (no step runs
/// while a callback does). The [`StepEnded`] still scheduled then counts one more,
/// between two callbacks too, which only makes older futures look older.
fn step_over() {
    if STEP_DUE.with(|d| d.replace(false)) {
        STEP.with(|s| s.set(s.get().wrapping_add(1)));
    }
}

/// Something awaits the future: a callback is on it (a task awaiting it adds its
/// wake-up; `gather`, `wait_for`, `shield` and `wait` theirs). postern adds none to a
/// send()'s future. A future without `_callbacks` counts as awaited.
fn awaited(py: Python<'_>, f: &Py<PyAny>) -> bool {
    f.bind(py)
        .getattr(intern!(py, "_callbacks"))
        .map_or(true, |c| c.is_truthy().unwrap_or(true))
}

/// The future is not done yet (a cancelled one is done).
fn pending(py: Python<'_>, f: &Py<PyAny>) -> bool {
    !f.bind(py)
        .call_method0(intern!(py, "done"))
        .is_ok_and(|d| d.is_truthy().unwrap_or(true))
}

/// A `receive()`'s future (in `read_waiters`) is [`pending`] and someone besides the
/// exchange holds it: one the app dropped unawaited (neither cancelled nor closed) can
/// give its body chunk to no one, so the next `receive()` gets the chunk instead.
fn waited_for(py: Python<'_>, f: &Py<PyAny>) -> bool {
    // SAFETY: with the GIL held (`py`), the count of a live object.
    let held = unsafe { pyo3::ffi::Py_REFCNT(f.as_ptr()) } > 1;
    held && pending(py, f)
}

/// Fails a send()'s future with `err`, always marked retrieved, so that asyncio does
/// not report each failed future nobody looks at (a forgotten `await`, a send() left
/// to `asyncio.wait`) when it is dropped: postern logs the cause once, and an app that
/// awaits the future still gets the exception. Whether someone awaits it cannot be
/// told here: `set_exception` has already taken its callbacks off to schedule them.
fn fail_send(py: Python<'_>, f: &Py<PyAny>, err: PyErr) -> PyResult<()> {
    let f = f.bind(py);
    f.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
    let _ = f.call_method0(intern!(py, "exception"));
    Ok(())
}

/// The message `receive` returns after the body.
fn disconnect_message(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    static DISCONNECT: pyo3::sync::PyOnceLock<Py<PyDict>> = pyo3::sync::PyOnceLock::new();
    let template = DISCONNECT.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
        Ok(d.unbind())
    })?;
    copy_dict(template.bind(py))
}

/// An `http.request` message: a copy of `{"type": "http.request", "body": b"",
/// "more_body": False}` made once (a dict copy costs less than the three insertions
/// into a new dict, the first of which allocates its table), with `body` and
/// `more_body` set when they differ: a body-less request's message (a GET, which
/// Django's handler and others read all the same) is the copy alone. A new dict each
/// time: the app may change what it is given.
fn request_message<'py>(py: Python<'py>, body: &[u8], more: bool) -> PyResult<Bound<'py, PyDict>> {
    static REQUEST: pyo3::sync::PyOnceLock<Py<PyDict>> = pyo3::sync::PyOnceLock::new();
    let template = REQUEST.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
        d.set_item(intern!(py, "body"), PyBytes::new(py, b""))?;
        d.set_item(intern!(py, "more_body"), false)?;
        Ok(d.unbind())
    })?;
    let d = copy_dict(template.bind(py))?;
    if !body.is_empty() {
        d.set_item(intern!(py, "body"), PyBytes::new(py, body))?;
    }
    if more {
        d.set_item(intern!(py, "more_body"), true)?;
    }
    Ok(d)
}

/// How surely `e` was raised because the client went away: it, or an exception it
/// was raised from or while handling (its cause or context; every member of an
/// exception group), is [`Disconnect::Certain`] postern's own [`ClientDisconnected`]
/// (the `OSError` of a `send()` after the disconnect) or Starlette's (and FastAPI's)
/// `ClientDisconnect` (raised when `receive()` returned `http.disconnect` during the
/// body); [`Disconnect::Likely`] a `ConnectionError` or a class named for a disconnect,
/// which may as well be the app's own (a database driver's): not counted as the app's
/// failure, but its traceback is logged.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Disconnect {
    No,
    Likely,
    Certain,
}

fn raised_by_disconnect(py: Python<'_>, e: &PyErr) -> Disconnect {
    fn own(x: &Bound<'_, PyAny>) -> Disconnect {
        if x.is_instance_of::<ClientDisconnected>() {
            return Disconnect::Certain;
        }
        let t = x.get_type();
        let name = t
            .name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let module = t
            .module()
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "ClientDisconnect" && module.starts_with("starlette") {
            Disconnect::Certain
        } else if x.is_instance_of::<pyo3::exceptions::PyConnectionError>()
            || name.contains("Disconnect")
        {
            Disconnect::Likely
        } else {
            Disconnect::No
        }
    }
    fn walk(x: &Bound<'_, PyAny>, depth: usize) -> Disconnect {
        if depth == 0 {
            return Disconnect::No;
        }
        if x.is_instance_of::<pyo3::exceptions::PyBaseExceptionGroup>() {
            if let Ok(all) = x.getattr("exceptions").and_then(|v| v.try_iter()) {
                let all: Vec<_> = all.flatten().collect();
                return all
                    .iter()
                    .map(|m| walk(m, depth - 1))
                    .min()
                    .unwrap_or(Disconnect::No);
            }
        }
        let chain = ["__cause__", "__context__"]
            .into_iter()
            .filter_map(|a| x.getattr(a).ok())
            .find(|c| !c.is_none())
            .map_or(Disconnect::No, |c| walk(&c, depth - 1));
        own(x).max(chain)
    }
    walk(e.value(py).as_any(), 8)
}

/// Why a body read failed for the front server's input, answered by postern
/// ([`Exchange::answer_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Over `--max-body` (a body without CONTENT_LENGTH): 413.
    TooLarge,
    /// Ended before CONTENT_LENGTH (FastCGI STDIN): 400.
    Short,
    /// Dropped by postern (a multiplexed FastCGI connection over `--fastcgi-buffer`):
    /// 503.
    Dropped,
}

/// How postern answers for a body refused for its input ([`Exchange::answer_input`]).
struct InputRefusal {
    code: u16,
    body: &'static [u8],
    /// What the app's later `send()`s raise once postern answered.
    answered: &'static str,
    /// What they raise once postern cut off a response that had started.
    cut: &'static str,
    /// Why, for the debug line.
    why: &'static str,
}

/// A FastCGI STDIN ended before CONTENT_LENGTH: 400.
const SHORT: InputRefusal = InputRefusal {
    code: 400,
    body: b"Bad Request: the request body is incomplete.\n",
    answered: "the request body ended before its Content-Length: postern answered 400 and the request is over",
    cut: "the request body ended before its Content-Length; the response had started, so postern cut it off and the request is over",
    why: "the request body ended before CONTENT_LENGTH",
};

/// postern dropped the body (a multiplexed FastCGI connection over
/// `--fastcgi-buffer`): 503, as a server out of room.
const DROPPED: InputRefusal = InputRefusal {
    code: 503,
    body: b"Service Unavailable: the request body could not be kept (--fastcgi-buffer); retry.\n",
    answered: "the request body was dropped (--fastcgi-buffer): postern answered 503 and the request is over",
    cut: "the request body was dropped (--fastcgi-buffer); the response had started, so postern cut it off and the request is over",
    why: "the request body was dropped (--fastcgi-buffer)",
};

fn gone_error() -> PyErr {
    ClientDisconnected::new_err(
        "the front server closed the connection, or aborted the request (the client went away)",
    )
}

/// What an abandoned task's later `send()`s raise ([`Exchange::_cut_unended`]): an
/// OSError, as after a disconnect, not the app's own error ("sent twice"). Not
/// through `send_refused`, which ends a response whose write is still in flight as
/// a cut one when the write returns (review 359: a client gone, or a 503 that took
/// two writes, then ended as incomplete).
const ABANDONED: &str =
    "postern cut this request off at the stop: its task did not end when cancelled";
/// What a `send()` with more body raises [`LENGTH_GRACE`] after the response ended
/// whole before the app's last body (see [`Exchange::disconnect_due`]).
const PAST_END: &str = "the response was sent whole (a head alone for HEAD, 204 or 304, or the whole Content-Length) over 5 s ago and the app still sends body with more_body True: the request is over";
/// What `send()` raises once postern cut a response off for a stall.
const STALLED: &str = "the front server read nothing of the response for --read-timeout: postern cut it off and closed the connection";

/// The error of a `send()` on a connection that is gone: the client's close, or
/// postern's after a stall.
fn gone_or_stalled(stalled: bool, by: Option<crate::wsgi::input::ClosedBy>) -> PyErr {
    match (stalled, by) {
        (true, _) => ClientDisconnected::new_err(STALLED),
        // postern closed the connection while the body came (review 377: a send then
        // said the client went away).
        (false, Some(by)) => ClientDisconnected::new_err(by.says()),
        (false, None) => gone_error(),
    }
}

fn refuse(e: HeaderError) -> PyErr {
    PyValueError::new_err(format!("http.response.start refused: {e}"))
}

/// What a head's buffer is made with: the usual head and a small body fit.
const HEAD_ROOM: usize = 256;

/// `HTTP/1.1 200 OK\r\n` (or `Status: 200 OK\r\n`), as [`resp::write_head`] writes it.
fn status_line(buf: &mut Vec<u8>, style: HeadStyle, code: u16) {
    let reason = resp::reason_or_unknown(code);
    buf.extend_from_slice(match style {
        HeadStyle::Http => b"HTTP/1.1 ",
        HeadStyle::Cgi => b"Status: ",
    });
    buf.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reason.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// The integer an out-of-range status stands for, as the range error shows it: an
/// `__index__` object's value rather than its repr.
fn index_text(status: &Bound<'_, PyAny>) -> String {
    if status.is_instance_of::<PyInt>() {
        return status.to_string();
    }
    status
        .call_method0(intern!(status.py(), "__index__"))
        .map_or_else(|_| status.to_string(), |n| n.to_string())
}

/// An `http.response.body`'s length in bytes; `TypeError` for what is neither `bytes`,
/// a `bytearray` nor a `memoryview`. Every `http.response.body` is checked so, also
/// one sent after the response has ended (whose bytes are not sent).
fn body_len(b: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = b.py();
    if let Ok(b) = b.cast::<PyBytes>() {
        return Ok(b.as_bytes().len());
    }
    if let Ok(a) = b.cast::<pyo3::types::PyByteArray>() {
        return Ok(a.len());
    }
    if b.cast::<pyo3::types::PyMemoryView>().is_ok() {
        // Bytes, not items (a memoryview of `int`s has 4 per item).
        return b.getattr(intern!(py, "nbytes"))?.extract();
    }
    Err(PyTypeError::new_err(format!(
        "http.response.body 'body' must be bytes, bytearray or memoryview, not {}",
        b.get_type().name()?
    )))
}

/// An `http.response.body` that is not `bytes`: a `bytearray` or a `memoryview` (which
/// Starlette sends), copied once into a new `bytes` now, since the app may change its
/// buffer once send() returns. Runs no Python code of the app's.
fn body_copy<'py>(b: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = b.py();
    if let Ok(a) = b.cast::<pyo3::types::PyByteArray>() {
        // SAFETY: the GIL is held and no Python code runs until the copy is made, so
        // nothing can resize or free the bytearray's buffer meanwhile. Straight into
        // the `bytes`: a copy through a `Vec` first made a 10 MiB body cost 30 MiB.
        return Ok(PyBytes::new(py, unsafe { a.as_bytes() }).into_any());
    }
    if let Ok(m) = b.cast::<pyo3::types::PyMemoryView>() {
        // One copy, in C order, whatever its format or strides.
        return m.call_method0(intern!(py, "tobytes"));
    }
    // What `body_len` refused.
    body_len(b).map(|_| b.clone())
}

/// What keeps the bytes [`body_bytes`] lent alive: a `memoryview`'s exported buffer,
/// or the `bytes` a non-contiguous one was copied into.
enum Held<'py> {
    Buffer {
        _export: pyo3::buffer::PyUntypedBuffer,
    },
    Copy(Bound<'py, PyBytes>),
}

/// The bytes of a body [`body_len`] accepted, in place: a `bytes`'s, a `bytearray`'s, a
/// C-contiguous `memoryview`'s buffer (exported into `held`); another `memoryview`'s
/// are copied, in C order, into `held`.
///
/// # Safety
/// The caller copies what it needs of them before any Python code runs (a
/// `bytearray`'s buffer can be resized or changed by Python code; the GIL is held).
unsafe fn body_bytes<'a, 'py>(
    b: &'a Bound<'py, PyAny>,
    held: &'a mut Option<Held<'py>>,
) -> PyResult<&'a [u8]> {
    let py = b.py();
    if let Ok(b) = b.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if let Ok(a) = b.cast::<pyo3::types::PyByteArray>() {
        // SAFETY: the caller's.
        return Ok(unsafe { a.as_bytes() });
    }
    // pyo3 refuses a buffer without shape or strides (a 0-dimensional memoryview:
    // `memoryview(ctypes.c_int(5))`): that one is copied by `tobytes` too.
    match pyo3::buffer::PyUntypedBuffer::get(b) {
        Ok(buf) if buf.is_c_contiguous() => {
            let (ptr, len) = (buf.buf_ptr().cast::<u8>().cast_const(), buf.len_bytes());
            *held = Some(Held::Buffer { _export: buf });
            if len == 0 {
                return Ok(&[]);
            }
            // SAFETY: the exported buffer stays valid while `held` keeps it exported,
            // and its bytes unchanged while no Python code runs (the caller's).
            return Ok(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
        Ok(buf) => drop(buf),
        Err(_) => {}
    }
    let copy = b
        .call_method0(intern!(py, "tobytes"))?
        .cast_into::<PyBytes>()?;
    let held = held.insert(Held::Copy(copy));
    match held {
        Held::Copy(c) => Ok(c.as_bytes()),
        Held::Buffer { .. } => unreachable!(),
    }
}

/// A header name or value: a `bytes` borrowed as it is, a `bytearray` copied.
fn header_bytes<'a>(o: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    if let Ok(b) = o.cast::<PyBytes>() {
        return Ok(std::borrow::Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(b) = o.cast::<pyo3::types::PyByteArray>() {
        return Ok(std::borrow::Cow::Owned(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "header names and values must be bytes, not {}",
        o.get_type()
            .name()
            .map(|s| s.to_string())
            .unwrap_or_default()
    )))
}

/// A response header pair of `bytes` that went out as it is (not a hop-by-hop or
/// `Status` header, which are dropped with a warning each time), and its Content-Length
/// if it is one: apps send the same headers response after response, mostly the same
/// objects (a module's constant list), so a pair seen before skips the checks.
struct SeenHeader {
    name: Py<PyBytes>,
    value: Py<PyBytes>,
    content_length: Option<u64>,
}

/// How many header pairs [`SEEN`] keeps (the oldest goes first).
const SEEN_MAX: usize = 16;

thread_local! {
    /// The header pairs `http.response.start` let through lately, on this (the loop's)
    /// thread. `bytes` are immutable, so a pair that is the same objects, or bytes
    /// equal to them, passes the same checks again.
    static SEEN: std::cell::RefCell<VecDeque<SeenHeader>> =
        const { std::cell::RefCell::new(VecDeque::new()) };
}

/// `Some(content_length)` when the pair went out before ([`SeenHeader`]).
fn seen_header(name: &Bound<'_, PyBytes>, value: &Bound<'_, PyBytes>) -> Option<Option<u64>> {
    SEEN.with(|seen| {
        let seen = seen.try_borrow().ok()?;
        let same = |h: &&SeenHeader| {
            (h.name.as_ptr() == name.as_ptr() && h.value.as_ptr() == value.as_ptr())
                || (h.name.bind(name.py()).as_bytes() == name.as_bytes()
                    && h.value.bind(name.py()).as_bytes() == value.as_bytes())
        };
        seen.iter().find(same).map(|h| h.content_length)
    })
}

/// Keeps a pair that passed the checks and goes out ([`SeenHeader`]).
fn remember_header(
    name: &Bound<'_, PyBytes>,
    value: &Bound<'_, PyBytes>,
    content_length: Option<u64>,
) {
    SEEN.with(|seen| {
        let Ok(mut seen) = seen.try_borrow_mut() else {
            return;
        };
        if seen.len() >= SEEN_MAX {
            seen.pop_front();
        }
        seen.push_back(SeenHeader {
            name: name.clone().unbind(),
            value: value.clone().unbind(),
            content_length,
        });
    });
}

/// Calls `f` with the name and value of one header `item`: a 2-tuple or 2-list read by
/// index, anything else through its iterator (exactly two items).
fn with_pair(
    item: &Bound<'_, PyAny>,
    f: &mut impl FnMut(&Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<()>,
) -> PyResult<()> {
    let pair_err = || PyTypeError::new_err("each header must be a [name, value] pair of bytes");
    if let Ok(t) = item.cast_exact::<PyTuple>() {
        if t.len() != 2 {
            return Err(pair_err());
        }
        return f(&*t.get_borrowed_item(0)?, &*t.get_borrowed_item(1)?);
    }
    if let Ok(l) = item.cast_exact::<PyList>() {
        if l.len() != 2 {
            return Err(pair_err());
        }
        return f(&l.get_item(0)?, &l.get_item(1)?);
    }
    let mut it = item.try_iter().map_err(|_| pair_err())?;
    let (Some(n), Some(v), None) = (it.next(), it.next(), it.next()) else {
        return Err(pair_err());
    };
    f(&n?, &v?)
}

impl Exchange {
    /// The event loop steps this request's task now: see [`Sink::serving_here`].
    pub(super) fn serving_here(slf: &Bound<'_, Self>) {
        if let Ok(me) = slf.try_borrow() {
            if let Some(sink) = me.sink.as_deref() {
                sink.serving_here();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Rc<Ctx>,
        req: crate::wsgi::Request,
        span: crate::logging::RequestSpan,
        slot: usize,
        is_head: bool,
    ) -> Exchange {
        let crate::wsgi::Request {
            head,
            body,
            listener,
            sink,
            request_id,
            ..
        } = req;
        let mut sink = sink;
        let style = sink.head_style();
        let peer_fd = sink.peer_fd();
        let peek_fd = peer_fd.or_else(|| {
            (listener.protocol == Protocol::FastCgi)
                .then(|| sink.write_fd())
                .flatten()
        });
        let loop_w = sink.loop_writes();
        // One clock read for both (a vDSO call each).
        let now = Instant::now();
        Exchange {
            ctx: LoopCtx(ctx),
            span,
            head,
            request_id,
            protocol: listener.protocol,
            slot,
            sink: Some(sink),
            style,
            is_head,
            peer_fd,
            peek_fd,
            started: false,
            code: 0,
            response_head: Vec::new(),
            content_length: None,
            head_sent: false,
            body_sent: 0,
            complete: false,
            ended_at_length: false,
            length_grace: None,
            grace_over: false,
            ended_at: None,
            sent_past_end: false,
            busy: false,
            cutter: None,
            job_extra: Vec::new(),
            job_futs: Vec::new(),
            closed_in_job: false,
            queued: None,
            gone: false,
            stalled: false,
            closed_by: None,
            served: None,
            app_error: None,
            task_over: false,
            released: false,
            begun: now,
            left_line: false,
            timed_out: false,
            stop_answered: false,
            cut_at_stop: false,
            abandoned: false,
            body: BodyState::Waiting(body),
            waiters: Vec::new(),
            read_in_flight: false,
            read_waiters: VecDeque::new(),
            read_kept: None,
            given_back: None,
            watching: false,
            extra_input: false,
            gone_id: None,
            watch_later: false,
            stream_watched: false,
            trailers_said: false,
            overflowed: false,
            loop_w,
            out: super::io::Out::new(),
            writing: false,
            flush_soon: false,
            send_waiters: VecDeque::new(),
            write_timer: None,
            last_progress: now,
            body_id: None,
            send_refused: None,
            input_refused: false,
        }
    }

    /// The request's task has run the app's call to its end (`_end` ran: `SERVE`
    /// returns right after it), or the request ended without a task.
    pub(super) fn task_over(&self) -> bool {
        self.task_over
    }

    fn head_only(&self) -> bool {
        self.is_head || resp::status_has_no_body(self.code)
    }

    /// The head, with a Content-Length when the whole body is known now, and room for
    /// `extra` bytes of body after it: what `start` wrote ([`Exchange::response_head`]), the
    /// computed length, the blank line, as [`resp::write_head`] writes a head.
    fn head_bytes(&mut self, whole_body: Option<usize>, extra: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.response_head);
        if buf.is_empty() {
            status_line(&mut buf, self.style, self.code);
        }
        buf.reserve(32 + extra);
        match whole_body {
            Some(n)
                if self.content_length.is_none()
                    && !resp::status_has_no_body(self.code)
                    && !(self.is_head && n == 0) =>
            {
                buf.extend_from_slice(b"Content-Length: ");
                buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        buf.extend_from_slice(b"\r\n");
        buf
    }

    /// Checks `http.response.start` and keeps its status and headers.
    fn start(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        if self.started {
            return Err(PyRuntimeError::new_err(
                "http.response.start sent twice for one request",
            ));
        }
        let status = message
            .get_item(intern!(py, "status"))?
            .ok_or_else(|| PyValueError::new_err("http.response.start has no 'status'"))?;
        // Read as Python reads an index (`operator.index`: an int, or anything with
        // `__index__`, such as numpy.int64, which uvicorn takes), then the same check as
        // WSGI's start_response: refused before anything is sent, so the app's error
        // answers 500. An integer of any size is the range error (2**63 too).
        let code = match status.extract::<u16>() {
            Ok(c) => resp::check_code(c, || c.to_string()),
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => {
                Err(HeaderError::Range(index_text(&status)))
            }
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "http.response.start 'status' must be an int status code, not {}",
                    status.get_type().name()?
                )))
            }
        }
        .map_err(refuse)?;
        // Kept aside until every header passed: an app that catches the error and
        // starts again (an error page) must not inherit the refused attempt's headers.
        let mut lines = std::mem::take(&mut self.response_head);
        if lines.capacity() == 0 {
            lines = super::io::spare_buffer();
        }
        lines.clear();
        // One allocation for the usual head and a small body after it.
        lines.reserve(HEAD_ROOM);
        status_line(&mut lines, self.style, code);
        let mut content_length = None;
        let no_length = code == 204;
        let mut size = "HTTP/1.1 000 \r\n\r\n".len() + 32;
        let mut add = |n: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>| -> PyResult<()> {
            // A pair of `bytes` checked before goes out as it did then.
            let exact = n
                .cast_exact::<PyBytes>()
                .ok()
                .zip(v.cast_exact::<PyBytes>().ok());
            if let Some(seen) = exact.and_then(|(n, v)| seen_header(n, v)) {
                let (name, value) = exact
                    .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                    .unwrap_or_default();
                size += name.len() + value.len() + 4;
                if size > HEAD_LIMIT {
                    return Err(PyValueError::new_err(format!(
                        "the response head is over {HEAD_LIMIT} bytes; nginx could not take it"
                    )));
                }
                if let Some(cl) = seen {
                    if content_length.is_some() {
                        // The same value again is sent once; another is refused.
                        content_length =
                            Some(resp::one_length(content_length, cl).map_err(refuse)?);
                        let _e = self.span.enter();
                        tracing::debug!(
                            "the app set content-length twice, with the same value; sent once"
                        );
                        return Ok(());
                    }
                    content_length = Some(cl);
                    if no_length {
                        tracing::debug!("the app set content-length on a 204; dropped");
                        return Ok(());
                    }
                }
                lines.extend_from_slice(name);
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value);
                lines.extend_from_slice(b"\r\n");
                return Ok(());
            }
            let (name, value) = (header_bytes(n)?, header_bytes(v)?);
            size += name.len() + value.len() + 4;
            if size > HEAD_LIMIT {
                return Err(PyValueError::new_err(format!(
                    "the response head is over {HEAD_LIMIT} bytes; nginx could not take it"
                )));
            }
            let name = proto_asgi::check_response_header(&name, &value).map_err(refuse)?;
            let mut cl_here = None;
            if resp::is_hop_by_hop(name) {
                let _e = self.span.enter();
                if resp::is_connection_noise(name, &value) {
                    tracing::debug!(header = %name, "the app set a hop-by-hop header; dropped");
                } else if name.eq_ignore_ascii_case("trailer") {
                    // Announces the trailers of an app that sends them (`trailers`
                    // True), dropped with them: nothing to warn about on each request.
                    // regression (hostile LOW): a WARN per response.
                    tracing::debug!("the app set Trailer; dropped, as its trailers are (nginx cannot pass them over uwsgi, FastCGI or SCGI)");
                } else {
                    tracing::warn!(header = %name, "the app set a hop-by-hop header; dropped (the front server owns the connection)");
                }
                return Ok(());
            }
            if name.eq_ignore_ascii_case("status") {
                let _e = self.span.enter();
                tracing::warn!(header = %name, "the app set a Status header; dropped (the status is http.response.start's)");
                return Ok(());
            }
            if name.eq_ignore_ascii_case("content-length") {
                let cl = match std::str::from_utf8(&value) {
                    Ok(text) if value.is_ascii() => resp::parse_content_length(text),
                    _ => resp::parse_content_length(&proto_asgi::latin1_text(&value)),
                }
                .map_err(refuse)?;
                if content_length.is_some() {
                    // The same value again is sent once; another is refused.
                    // regression (probe 318): two identical ones answered 500.
                    content_length = Some(resp::one_length(content_length, cl).map_err(refuse)?);
                    let _e = self.span.enter();
                    tracing::debug!(
                        "the app set content-length twice, with the same value; sent once"
                    );
                    return Ok(());
                }
                content_length = Some(cl);
                cl_here = content_length;
            }
            if let Some((n, v)) = exact {
                remember_header(n, v, cl_here);
            }
            if no_length && cl_here.is_some() {
                // A 204 has no Content-Length (RFC 9110 §8.6: a server must not send
                // one): its line is dropped, as its body is (checked all the same: two
                // are refused, as on any response).
                // regression (hostile LOW): nginx passed the app's on to clients.
                tracing::debug!("the app set content-length on a 204; dropped");
                return Ok(());
            }
            // `Name: value\r\n`, the value's bytes as they are (latin-1).
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(&value);
            lines.extend_from_slice(b"\r\n");
            Ok(())
        };
        if let Some(given) = message.get_item(intern!(py, "headers"))? {
            // A list or tuple of 2-tuples or 2-lists (what apps send) is read by index;
            // any other iterable through its iterator, with the same checks. A list is
            // read as Python's list iterator reads it (by index, its length looked at
            // each step), so a pair that is a generator changing it reads the same.
            if let Ok(list) = given.cast_exact::<PyList>() {
                for item in list.iter() {
                    with_pair(&item, &mut add)?;
                }
            } else if let Ok(tuple) = given.cast_exact::<PyTuple>() {
                for item in tuple.iter_borrowed() {
                    with_pair(&item, &mut add)?;
                }
            } else {
                for item in given.try_iter().map_err(|_| {
                    PyTypeError::new_err(
                        "http.response.start 'headers' must be an iterable of [name, value] byte pairs",
                    )
                })? {
                    with_pair(&item?, &mut add)?;
                }
            }
        }
        self.response_head = lines;
        self.content_length = content_length.filter(|_| !no_length);
        self.code = code;
        self.started = true;
        // Once every header passed: a refused start answers 500, nothing past 599.
        crate::wsgi::response::warn_past_defined(code, true);
        Ok(())
    }

    /// Writes `data` (`last`: the response is whole with it). What the socket takes
    /// now goes with the GIL held; the rest is written on the executor, and the
    /// returned future completes when it is out.
    fn write<'py>(
        slf: &Bound<'py, Self>,
        data: Vec<u8>,
        last: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        if me.loop_w.is_some() {
            let start = me.out.pushed();
            me.out.push_vec(data);
            if last {
                me.complete = true;
            }
            drop(me);
            return Self::pump(slf, last, start);
        }
        if me.busy && !me.gone {
            // An earlier send()'s write runs on the executor (the app cancelled that
            // send(), or did not wait for it): this one goes out after it, in call
            // order, and its future is done when its bytes are written.
            let fut = me.ctx.create_future.bind(py).call0()?;
            let sf = SendFut::new(&fut, &*me.lio(py)?)?;
            let q = me.queued.get_or_insert_with(|| Queued {
                data: Vec::new(),
                last: false,
                futs: Vec::new(),
            });
            q.data.extend_from_slice(&data);
            q.last |= last;
            // The sends nobody waits for left `futs` in this send()'s `unawaited`,
            // just before (only a body send gets here: nothing else writes while a
            // job is in flight).
            q.futs.push((sf, data.len()));
            if last {
                me.complete = true;
            }
            return Ok(Some(fut));
        }
        let Some(sink) = me.sink.as_mut() else {
            return Err(gone_error());
        };
        let n = match sink.try_write(&data, last) {
            Ok(n) => n,
            Err(e) => {
                let _e = me.span.enter();
                crate::logging::write_failed(&e);
                drop(_e);
                return Err(me.gone_by(py, &e));
            }
        };
        if n == data.len() {
            if last {
                me.complete = true;
            }
            return Ok(None);
        }
        // A small last write the sink did not take at once (FastCGI's END_REQUEST
        // goes with it in one blocking send) goes from here when the socket has room:
        // a thread hop and two loop iterations cost more than that send.
        if last && data.len() - n <= QUICK_LAST && !sink.has_pending() && has_room(sink.write_fd())
        {
            let r = py.detach(|| sink.write_last(&data[n..]));
            me.complete = true;
            if let Err(e) = r {
                let _e = me.span.enter();
                crate::logging::write_failed(&e);
                drop(_e);
                return Err(me.gone_by(py, &e));
            }
            return Ok(None);
        }
        // What is left, moved down in place (no second buffer of a large body's size).
        let mut rest = data;
        rest.drain(..n);
        if last {
            me.complete = true;
        }
        drop(me);
        Self::job(slf, Job::Write(rest, last), None).map(Some)
    }

    /// Runs `job` with the sink on an executor thread (GIL released); the future is
    /// done when it is.
    /// `fut`: the future to complete (a queued write's), else a new one.
    fn job<'py>(
        slf: &Bound<'py, Self>,
        job: Job,
        fut: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        let Some(sink) = me.sink.take() else {
            return Err(gone_error());
        };
        // The sink goes to an executor thread, which may drop it: the loop thread's
        // crash slot must not name it meanwhile.
        crate::server::fastcgi::crash::clear();
        me.busy = true;
        if me.cutter.is_none() {
            me.cutter = sink.cutter();
        }
        let ctx = me.ctx.clone();
        let fut = match fut {
            Some(f) => f,
            None => {
                let f = ctx.create_future.bind(py).call0()?;
                if !matches!(job, Job::Flush) {
                    // The future goes to the app (its send()'s).
                    let sf = SendFut::new(&f, &*me.lio(py)?)?;
                    me.job_futs.push(sf);
                }
                f
            }
        };
        drop(me);
        let job = Py::new(
            py,
            SinkJob {
                work: Mutex::new(Some((sink, job))),
                back: Mutex::new(None),
            },
        )?;
        // The job's end comes from the executor's own future, not from an asyncio
        // future wrapping it: the app may cancel what `send()` returned
        // (`asyncio.wait_for(send(...), t)`, a cut-off), and a wrapper's callback
        // would then run at once, while the job still holds the sink. The write goes
        // on; `_job_done` takes the sink back when it has ended, then completes the
        // future the app got (if it still waits), so the sink is back before the app
        // runs on.
        // The executor thread runs the future's callbacks and drops its own
        // references last, maybe after the loop is done with this exchange: what it
        // holds must not lead to the exchange (dropped on that thread, it would be
        // leaked with a RuntimeError), so it holds a number the loop looks up.
        let partial = ctx.partial.bind(py);
        let cb = partial.call1((
            slf.getattr(intern!(py, "_job_done"))?,
            job.clone_ref(py),
            fut.clone(),
        ))?;
        let id = JOB_IDS.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1));
            id
        });
        JOBS_DONE.with(|j| j.borrow_mut().insert(id, cb.unbind()));
        let to_loop = ToLoop {
            id,
            call_soon_threadsafe: ctx
                .event_loop
                .bind(py)
                .getattr(intern!(py, "call_soon_threadsafe"))?
                .unbind(),
        };
        let cf = ctx
            .io_executor
            .bind(py)
            .call_method1(intern!(py, "submit"), (job,))?;
        cf.call_method1(intern!(py, "add_done_callback"), (Py::new(py, to_loop)?,))?;
        Ok(fut)
    }

    /// Bytes of earlier `send()`s that still wait to be written although nobody
    /// waits for them (the app cancelled those sends, or never awaited them: a
    /// forgotten `await`): what [`super::io::MAX_UNAWAITED`] bounds. The messages of
    /// sends still awaited (`gather(send(a), send(b))`), or called in the app's
    /// step that runs now, do not count: the app holds them anyway.
    ///
    /// The sends nobody waits for leave the queues here (the forgotten ones settled):
    /// their bytes count through what waits to be written, and the queues hold only
    /// sends awaited or of the step running now. Kept, each send() looked at all of
    /// them: tiny sends never awaited to a front server that reads nothing cost
    /// quadratic loop time and never reached the bound.
    fn unawaited(&mut self, py: Python<'_>) -> usize {
        if self.loop_w.is_some() {
            let sent = self.out.sent();
            let mut awaited = 0u64;
            self.send_waiters.retain_mut(|w| match w.fut.wait(py) {
                Wait::Awaited => {
                    awaited += w.end.saturating_sub(w.start.max(sent));
                    true
                }
                Wait::Done => false,
                Wait::Forgotten => !settle_forgotten(py, &w.fut.fut),
            });
            return self
                .out
                .queued()
                .saturating_sub(usize::try_from(awaited).unwrap_or(usize::MAX));
        }
        self.job_futs.retain_mut(|f| match f.wait(py) {
            Wait::Awaited => true,
            Wait::Done => false,
            Wait::Forgotten => !settle_forgotten(py, &f.fut),
        });
        self.queued.as_mut().map_or(0, |q| {
            let mut awaited = 0usize;
            q.futs.retain_mut(|(f, n)| match f.wait(py) {
                Wait::Awaited => {
                    awaited += *n;
                    true
                }
                Wait::Done => false,
                Wait::Forgotten => !settle_forgotten(py, &f.fut),
            });
            q.data.len().saturating_sub(awaited)
        })
    }

    /// The `send()`s still waiting for their bytes to go get `err`: those bytes
    /// will not be written.
    fn fail_sends(&mut self, py: Python<'_>, err: impl Fn() -> PyErr) {
        let waiting = self.send_waiters.drain(..).map(|w| w.fut.fut).chain(
            self.queued
                .take()
                .into_iter()
                .flat_map(|q| q.futs)
                .map(|(f, _)| f.fut),
        );
        for w in waiting.collect::<Vec<_>>() {
            if pending(py, &w) {
                let _ = fail_send(py, &w, err());
            }
        }
    }

    pub(super) fn set_gone(&mut self, py: Python<'_>) {
        if self.gone {
            return;
        }
        self.gone = true;
        // postern closed the connection while the body came, and the app was not
        // reading it: its sends say so too (review 378).
        if self.closed_by.is_none() {
            self.closed_by = self.sink.as_ref().and_then(|s| s.closed_by());
        }
        self.unwatch(py);
        self.stop_writing(py);
        self.out.clear();
        let (stalled, by) = (self.stalled, self.closed_by);
        self.fail_sends(py, || gone_or_stalled(stalled, by));
        self.wake_waiters(py);
    }

    /// The front server read nothing of the response for `--read-timeout`: postern
    /// cuts it off and closes (the stall is logged by the caller).
    fn set_stalled(&mut self, py: Python<'_>) {
        if !self.gone {
            self.stalled = true;
            self.set_gone(py);
        }
    }

    /// A write failed with `e` (logged): gone, by a stall or the client's close; the
    /// error for the `send()`.
    fn gone_by(&mut self, py: Python<'_>, e: &std::io::Error) -> PyErr {
        if e.kind() == std::io::ErrorKind::TimedOut {
            self.set_stalled(py);
        } else {
            self.set_gone(py);
        }
        gone_or_stalled(self.stalled, self.closed_by)
    }

    /// The loop no longer waits for room on the socket.
    fn stop_writing(&mut self, py: Python<'_>) {
        if let Some(t) = self.write_timer.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
        if std::mem::take(&mut self.writing) {
            if let (Some((fd, _)), Ok(lio)) = (self.loop_w, self.lio(py)) {
                let _ = lio.remove_writer.bind(py).call1((fd,));
            }
        }
    }

    fn lio(&self, py: Python<'_>) -> PyResult<Rc<super::io::LoopIo>> {
        super::io::loop_io(self.ctx.event_loop.bind(py))
    }

    /// Nothing more of the request is to be read from its connection: input now is
    /// the front server's close.
    fn input_whole(&self) -> bool {
        matches!(
            self.body,
            BodyState::Done | BodyState::Waiting(Body::Empty | Body::Memory(_) | Body::File(..))
        )
    }

    /// A `receive()` after the body returns `http.disconnect` now: the front server
    /// went away, or the response is finished, which for one that ended at its
    /// Content-Length is once the app has sent its last `http.response.body` too (as
    /// uvicorn: Django, told of a disconnect, cancels the view's streamed response,
    /// and the code after its last chunk did not run).
    /// A response that ended at its Content-Length whose last body does not come
    /// within [`LENGTH_GRACE`] is finished for `receive()` then.
    fn disconnect_due(&self) -> bool {
        self.gone || (self.served.is_some() && (!self.ended_at_length || self.grace_over))
    }

    fn cancel_grace(&mut self, py: Python<'_>) {
        if let Some(t) = self.length_grace.take() {
            let _ = t.bind(py).call_method0(intern!(py, "cancel"));
        }
    }

    /// Resolves the `receive()` futures waiting for the end with `http.disconnect`.
    fn wake_waiters(&mut self, py: Python<'_>) {
        for w in std::mem::take(&mut self.waiters) {
            let w = w.bind(py);
            if w.call_method0(intern!(py, "done"))
                .is_ok_and(|d| d.is_truthy().unwrap_or(true))
            {
                continue;
            }
            if let Ok(m) = disconnect_message(py) {
                let _ = w.call_method1(intern!(py, "set_result"), (m,));
            }
        }
    }

    fn unwatch(&mut self, py: Python<'_>) {
        if let Some(id) = self.gone_id.take() {
            self.ctx.gone_waiting.borrow_mut().remove(&id);
        }
        self.unpeek(py);
    }

    /// The loop no longer looks at the connection (the server layer may still tell).
    fn unpeek(&mut self, py: Python<'_>) {
        if std::mem::take(&mut self.watching) {
            if let Some(fd) = self.peek_fd {
                let _ = self.ctx.remove_reader.bind(py).call1((fd,));
            }
        }
    }

    /// Ends the response once nothing is in flight: flushes what a writer still
    /// holds (executor), then finishes the sink, writes the access line.
    fn settle(slf: &Bound<'_, Self>, end_now: Option<End>) -> PyResult<()> {
        // A child the app forked whose task ended (a 500 or END_REQUEST would follow).
        crate::forked::guard();
        let py = slf.py();
        let mut me = slf.borrow_mut();
        if me.served.is_some() || me.busy {
            return Ok(());
        }
        let end = match end_now {
            Some(e) => e,
            None if me.gone && me.stalled => End::Stalled(me.code),
            // Closed by postern while the body came: `as_answered` tells it from the
            // sink's `Sent::closed_by`.
            None if me.gone => End::ClientGone(me.code),
            None if me.complete => {
                if me.content_length.is_some_and(|cl| me.body_sent < cl) && !me.head_only() {
                    let _e = me.span.enter();
                    tracing::error!(
                        sent = me.body_sent,
                        content_length = me.content_length.unwrap_or(0),
                        "the app sent less body than its Content-Length; aborting the connection"
                    );
                    End::Incomplete(me.code)
                } else {
                    End::Complete(me.code)
                }
            }
            None => return Ok(()),
        };
        if matches!(
            end,
            End::Incomplete(_) | End::ClientGone(_) | End::Stalled(_) | End::Closed(..)
        ) {
            if matches!(end, End::Incomplete(_)) {
                // What the app sent before it failed still goes, as far as the socket
                // takes it now (the abort follows).
                let me = &mut *me;
                if let Some(sink) = me.sink.as_mut() {
                    let _ = me.out.write(py, sink.as_mut());
                }
            }
            me.stop_writing(py);
            me.out.clear();
            let (stalled, by) = (me.stalled, me.closed_by);
            me.fail_sends(py, || gone_or_stalled(stalled, by));
        } else if !me.out.is_empty() {
            // The loop writes the rest as the socket takes it, then ends the response.
            return Ok(());
        }
        if !matches!(
            end,
            End::Incomplete(_) | End::ClientGone(_) | End::Stalled(_) | End::Closed(..)
        ) && me.sink.as_ref().is_some_and(|s| s.has_pending())
        {
            drop(me);
            Self::job(slf, Job::Flush, None)?;
            return Ok(());
        }
        me.unwatch(py);
        let Some(mut sink) = me.sink.take() else {
            return Ok(());
        };
        crate::server::fastcgi::crash::clear();
        let sent = if sink.finish_is_quick() {
            sink.finish(end)
        } else {
            py.detach(|| sink.finish(end))
        };
        // A client gone before anything went out had no status (a start held, or the
        // 500 an app's error handler sent after the disconnect): 0, as on the WSGI path.
        let end = match end {
            End::ClientGone(_) if sent.bytes == 0 => End::ClientGone(0),
            End::Stalled(_) if sent.bytes == 0 => End::Stalled(0),
            e => e,
        };
        // Logged and counted as the 504 postern answered at --timeout, if it did; the
        // task is still watched as one whose response was cut (its app's send failed).
        // regression (review 345): taken as a response sent whole, the task left
        // --timeout's watch, and the master spared a worker whose task still ran.
        me.finish_log(end.as_answered(&sent), sent);
        if !me.task_over && matches!(end, End::Complete(_)) {
            drop(me);
            Self::responded(slf)?;
            me = slf.borrow_mut();
        }
        if me.disconnect_due() {
            me.wake_waiters(py);
        } else if me.ended_at_length && me.length_grace.is_none() && !me.task_over {
            let lio = me.lio(py)?;
            drop(me);
            let t = lio.call_later.bind(py).call1((
                LENGTH_GRACE.as_secs_f64(),
                slf.getattr(intern!(py, "_length_grace"))?,
            ))?;
            let mut me = slf.borrow_mut();
            me.length_grace = Some(t.unbind());
            me.ended_at = Some(Instant::now());
        }
        Ok(())
    }

    /// The response is complete and the task runs on (work the app does after it, a
    /// FastAPI `BackgroundTasks` task): the request is served, so its task leaves the
    /// scoreboard line `--timeout` looks at; it still holds its `--max-concurrency`
    /// place, and a stop still waits for it (then cancels it at `--graceful-timeout`).
    /// Past `--timeout` it gets one warning. A response cut short (the client gone, an
    /// abort) keeps its task watched: that may be a request stuck in the app.
    fn responded(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut me = slf.borrow_mut();
        me.left_line = true;
        me.ctx.watch.responded(me.slot);
        let Some(timeout) = me.ctx.timeout else {
            return Ok(());
        };
        let due = me.begun + timeout;
        let ctx = Rc::clone(&me.ctx);
        ctx.after
            .borrow_mut()
            .insert(me.slot, (me.begun, me.span.clone()));
        drop(me);
        if ctx.after_due.get().is_none_or(|d| d > due) {
            Self::arm_after(slf, &ctx, due)?;
        }
        Ok(())
    }

    /// Sets the timer that looks at the tasks running on after their response.
    fn arm_after(slf: &Bound<'_, Self>, ctx: &Ctx, due: Instant) -> PyResult<()> {
        let py = slf.py();
        let lio = slf.borrow().lio(py)?;
        let wait = due.saturating_duration_since(Instant::now());
        lio.call_later.bind(py).call1((
            wait.as_secs_f64(),
            slf.getattr(intern!(py, "_past_timeout"))?,
        ))?;
        ctx.after_due.set(Some(due));
        Ok(())
    }

    fn finish_log(&mut self, end: End, sent: Sent) {
        let (status, mut ending) = end.for_log();
        if self.timed_out || sent.late {
            ending = ending.past_timeout();
        } else if self.stop_answered && ending == crate::logging::Ending::Complete {
            ending = crate::logging::Ending::StopAnswered;
        }
        {
            let _e = self.span.enter();
            if !self.span.is_disabled() {
                crate::logging::record_end(status, sent.started);
            }
        }
        if crate::logging::access_enabled() {
            crate::logging::access(&crate::logging::Access {
                head: &self.head,
                id: &self.request_id,
                protocol: self.protocol,
                status,
                ending,
                bytes: sent.bytes,
                started: sent.started,
            });
        }
        self.ctx.answered.set(self.ctx.answered.get() + 1);
        self.served = Some(Served {
            end,
            sent,
            app_error: self.app_error,
        });
    }

    /// The request's task was cancelled by the stop's cut-off (`--graceful-timeout`,
    /// an immediate stop, a `--timeout` kill): one line naming it, no traceback (the
    /// stop's warning said why), and the response ended as a cut one: aborted once it
    /// started, else answered 503 (the server is stopping; the app did nothing wrong:
    /// a 500 read as an app bug in access logs and 5xx dashboards, probe 329), or 504
    /// for the request that passed `--timeout` itself.
    fn end_cut(slf: &Bound<'_, Self>, served: bool, started_sending: bool) -> PyResult<()> {
        let killed = crate::stop::master_stop_now() == Some(crate::stop::StopNow::Timeout);
        let (by, past) = {
            let me = slf.borrow();
            // A task whose response went whole left --timeout's watch: never the one
            // past it.
            let past = me
                .ctx
                .timeout
                .filter(|&t| killed && !served && me.begun.elapsed() >= t);
            (me.ctx.stop.cut_says().to_owned(), past)
        };
        if past.is_some() {
            slf.borrow_mut().timed_out = true;
        }
        // A write on an executor thread holds the sink (a stream to a front server
        // that reads slowly): the response is cut now, so that the write comes back at
        // once and the response ends here, with its access line, while the loop still
        // runs (stop.py's `cut_off` waits for it). Left to the process's leaving, it
        // came back after the loop had closed: no access line, and an error line.
        // Not a response the app completed whose last bytes are still going out.
        // regression (CI, asgi_cut): 1 of 3 streams cut by a stop now was logged.
        let cutter = {
            let mut me = slf.borrow_mut();
            if me.busy && !me.complete {
                me.cutter.take()
            } else {
                None
            }
        };
        if let Some(cut) = cutter {
            slf.py().detach(cut);
        }
        let who = match past {
            Some(t) => format!(
                "cut off at its own --timeout ({}s): postern cancelled this request's task",
                t.as_secs_f64()
            ),
            None if killed => "cut off by another request's --timeout (its worker is replaced): postern cancelled this request's task".to_owned(),
            None => format!("cut off {by}: postern cancelled this request's task"),
        };
        if served {
            tracing::warn!("{who}, which still ran after its response was sent whole");
        } else if started_sending {
            tracing::warn!("{who} during its response; aborting the connection");
            let code = slf.borrow().code;
            Self::settle(slf, Some(End::Incomplete(code)))?;
            // A write still on an executor thread holds the sink: the response ends
            // when it returns, which the stop may not wait for. Named here, the task
            // leaves its scoreboard line now, or the master named it again at the exit.
            // regression (review 357): named twice over FastCGI to a slow reader.
            let me = slf.borrow();
            if me.served.is_none() && !me.left_line {
                me.ctx.watch.responded(me.slot);
                drop(me);
                slf.borrow_mut().left_line = true;
            }
        } else if past.is_some() {
            Self::answer_plain(slf, 504, b"Gateway Timeout\n")?;
            // Over FastCGI the server layer may have answered it just before the
            // kill (`answer_overdue`, which said so): not said twice.
            let late = slf.borrow().served.as_ref().is_some_and(|s| s.sent.late);
            if late {
                tracing::debug!("{who} before its response started; its 504 had gone out");
            } else {
                tracing::warn!("{who} before its response started; answered 504");
            }
        } else {
            tracing::warn!("{who} before its response started; answered 503");
            slf.borrow_mut().stop_answered = true;
            Self::answer_plain(slf, 503, b"Service Unavailable\n")?;
        }
        Ok(())
    }

    /// Answers a request the app never started a response for.
    fn answer_500(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::answer_plain(slf, 500, b"Internal Server Error\n")
    }

    /// Answers `code` with a short text `body` in place of the app, whose response has
    /// not started (the whole answer in one write).
    fn answer_plain(slf: &Bound<'_, Self>, code: u16, body: &[u8]) -> PyResult<()> {
        let mut me = slf.borrow_mut();
        me.code = code;
        me.started = true;
        let style = me.style;
        me.response_head.clear();
        status_line(&mut me.response_head, style, code);
        me.response_head
            .extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
        me.content_length = None;
        me.is_head = false;
        let mut buf = me.head_bytes(Some(body.len()), body.len());
        buf.extend_from_slice(body);
        me.head_sent = true;
        me.body_sent = body.len() as u64;
        drop(me);
        if Self::write(slf, buf, true).is_err() {
            return Self::settle(slf, None);
        }
        let busy = slf.borrow().busy;
        if !busy {
            Self::settle(slf, None)?;
        }
        Ok(())
    }

    /// The request's task ended: answers or aborts what the app left undone, and
    /// frees the slot.
    /// The app is done with the request: `failure` is what it raised, if anything.
    pub fn end_with(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        // Named and ended at the cut-off already (`_cut_unended`).
        if slf.borrow().abandoned {
            return Ok(());
        }
        let span = slf.borrow().span.clone();
        let _entered = span.enter();
        let (started_sending, served, gone, complete, cut, refused, past_end) = {
            let mut me = slf.borrow_mut();
            me.task_over = true;
            (
                me.head_sent,
                me.served.is_some(),
                me.gone,
                me.complete,
                me.cut_at_stop && failure.is_some(),
                me.input_refused,
                me.sent_past_end,
            )
        };
        // What the app raised because the client went away (an OSError of a send,
        // Starlette's ClientDisconnect after receive() said http.disconnect) is not its
        // failure, as on the WSGI path; anything else it raised is. The same for the
        // OSError of a send long past its response's end ([`PAST_END`]).
        let disconnect = match &failure {
            Some(e) if gone || refused => raised_by_disconnect(py, e),
            // Only postern's own OSError (or Starlette's ClientDisconnect from it): a
            // ConnectionError of the app's is its own, nobody went away (review 366).
            Some(e) if past_end => match raised_by_disconnect(py, e) {
                Disconnect::Certain => Disconnect::Certain,
                _ => Disconnect::No,
            },
            _ => Disconnect::No,
        };
        let from_disconnect = disconnect != Disconnect::No;
        if failure.is_some() && !from_disconnect && !cut {
            slf.borrow_mut().app_error = Some(AppError::Exception);
        }
        match failure {
            None if gone => {
                tracing::debug!("the request ended after the client went away");
                Self::settle(slf, None)?;
            }
            Some(_) if refused && from_disconnect => {
                tracing::debug!(
                    "the app stopped on the http.disconnect of its cut body (postern answered 400)"
                );
            }
            Some(_) if past_end && !gone && disconnect == Disconnect::Certain => {
                tracing::debug!("the app stopped on the OSError of a send long after its response had been sent whole");
            }
            Some(_) if disconnect == Disconnect::Certain => {
                tracing::debug!("the app stopped: the client went away");
                Self::settle(slf, None)?;
            }
            Some(e) if from_disconnect => {
                // A ConnectionError (or a class named for a disconnect) may be the
                // client's doing or the app's own (its database's): not counted, but
                // its traceback stays in the log, the first 20 of each 10 s at warn (a
                // client that cuts many requests at once, or a close for room of a
                // connection carrying 64, made as many tracebacks).
                match disconnect_raised_line() {
                    Some(unlogged) => {
                        tracing::warn!(traceback = %traceback(py, &e), unlogged, "the app raised a connection error after the client went away: taken for the disconnect, not counted as an app error; nothing answered")
                    }
                    None => {
                        tracing::debug!(traceback = %traceback(py, &e), "the app raised a connection error after the client went away: taken for the disconnect, not counted as an app error; nothing answered")
                    }
                }
                Self::settle(slf, None)?;
            }
            Some(e) if gone => {
                // A bug of the app's own, though nobody is left to answer: its
                // traceback is kept (as on the WSGI path).
                tracing::error!(traceback = %traceback(py, &e), "the app raised an exception after the client went away; nothing answered");
                Self::settle(slf, None)?;
            }
            Some(e) if e.is_instance_of::<ClientDisconnected>(py) => {
                tracing::debug!("the app stopped: the client went away");
                Self::settle(slf, None)?;
            }
            // Postern's own cancellation at --graceful-timeout (a stop or a reload), or
            // at an immediate stop: one line per request, no traceback (the stop's
            // warning said why).
            // regression: each was an ERROR blaming the app, with the cancellation's
            // traceback: a reload with many open streams flooded the log.
            Some(_) if cut => Self::end_cut(slf, served, started_sending)?,
            Some(e) if !started_sending && !served => {
                tracing::error!(traceback = %traceback(py, &e), "the app raised an exception; answered 500");
                Self::answer_500(slf)?;
            }
            Some(e) => {
                if !served {
                    tracing::error!(traceback = %traceback(py, &e), "the app raised an exception after its response started; aborting the connection");
                    let code = slf.borrow().code;
                    Self::settle(slf, Some(End::Incomplete(code)))?;
                } else {
                    tracing::error!(traceback = %traceback(py, &e), "the app raised an exception after its response was sent");
                }
            }
            None if served || complete => {
                let me = slf.borrow();
                // One line per request: a body over the Content-Length was named when
                // it came. uvicorn logs an error here and closes the connection; the
                // front server has had the whole response, hence only a warning.
                // Not after the app was told the request is over (PAST_END).
                if me.ended_at_length && !me.overflowed && !me.sent_past_end {
                    if me.head_only() {
                        tracing::warn!(status = me.code, "the app returned without its last http.response.body (more_body False); the response is its head alone (HEAD, 204 or 304), sent whole");
                    } else {
                        tracing::warn!("the app returned without its last http.response.body (more_body False); the response had reached its Content-Length and was sent whole");
                    }
                }
            }
            None if !slf.borrow().started => {
                slf.borrow_mut().app_error = Some(AppError::AsgiContract);
                tracing::error!(
                    "the app returned without sending http.response.start; answered 500"
                );
                Self::answer_500(slf)?;
            }
            None if !started_sending && slf.borrow().head_only() => {
                // HEAD, 204 or 304: no body may follow the head anyway, so the start
                // held for the first body is the whole response, sent as the app
                // gave it (a HEAD's Content-Length, if any, is the app's).
                // regression: answered 500, as a response with no body message.
                tracing::debug!("the app returned after http.response.start alone; its response is its head (HEAD, 204 or 304)");
                let buf = {
                    let mut me = slf.borrow_mut();
                    me.head_sent = true;
                    me.head_bytes(None, 0)
                };
                let _ = Self::after_write(slf, Self::write(slf, buf, true));
                if slf.borrow().gone {
                    Self::settle(slf, None)?;
                }
            }
            None if !started_sending => {
                // Its start is held until a body comes: nothing has gone out yet.
                let status = {
                    let mut me = slf.borrow_mut();
                    me.app_error = Some(AppError::AsgiContract);
                    me.code
                };
                tracing::error!(
                    status,
                    "the app returned after http.response.start without sending any http.response.body; answered 500 (the start waits for the first body: a response ends with an http.response.body whose more_body is False, an empty one included)"
                );
                Self::answer_500(slf)?;
            }
            None => {
                slf.borrow_mut().app_error = Some(AppError::AsgiContract);
                tracing::error!("the app returned before its response was complete (a last http.response.body with more_body False); aborting the connection");
                let code = slf.borrow().code;
                Self::settle(slf, Some(End::Incomplete(code)))?;
            }
        }
        // Left first: the release may take the next requests (a place freed at
        // --max-concurrency), whose spans would be made inside this one's, each
        // request then the child of the one before it.
        drop(_entered);
        Self::release(slf)
    }

    /// The task is over and the response ended: the monitor and the loop learn it.
    fn release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.borrow();
        if !me.task_over || me.served.is_none() || me.released {
            return Ok(());
        }
        // `slot`: the task's id in the watch.
        let slot = me.slot;
        me.ctx.watch.end(slot, me.protocol, me.served.as_ref());
        let ctx = Rc::clone(&me.ctx);
        if me.left_line && ctx.timeout.is_some() {
            ctx.after.borrow_mut().remove(&slot);
        }
        drop(me);
        {
            let mut me = slf.borrow_mut();
            me.released = true;
            me.cancel_grace(py);
            if matches!(me.body, BodyState::Polled(..)) {
                me.body_done(py);
                // The request is over: a receive() still waiting for the body gets
                // http.disconnect. Left pending, its done callback (ours) kept it
                // and this exchange in a cycle the GC cannot see: a leak per request.
                let rest = std::mem::take(&mut me.read_waiters);
                me.waiters.extend(rest);
            }
            // Those still waiting (a response that ended at its Content-Length
            // without the app's last body): pending, one would keep this exchange
            // in a cycle through its task that the GC cannot see.
            me.wake_waiters(py);
        }
        if let Some(ended) = ctx.ended.get() {
            ended(py, slot);
        }
        Ok(())
    }

    /// Starts watching the connection for the front server closing it (a pending
    /// `receive()` then gets `http.disconnect`).
    /// Reads the body's next chunk on the executor; `_read_done` hands it out.
    fn start_read(slf: &Bound<'_, Self>, me: &mut Exchange, job: &Py<ReadJob>) -> PyResult<()> {
        let py = slf.py();
        me.read_in_flight = true;
        let ctx = &me.ctx;
        let fut = ctx
            .run_in_executor
            .bind(py)
            .call1((ctx.io_executor.bind(py), job.clone_ref(py)))?;
        let cb = ctx
            .partial
            .bind(py)
            .call1((slf.getattr(intern!(py, "_read_done"))?,))?;
        fut.call_method1(intern!(py, "add_done_callback"), (cb,))?;
        Ok(())
    }

    /// Drops the `receive()` futures that are done already (cancelled by the app) or
    /// that the app dropped unawaited ([`waited_for`]).
    fn prune(py: Python<'_>, futures: &mut VecDeque<Py<PyAny>>) {
        futures.retain(|f| waited_for(py, f));
    }

    fn watch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        // Once the response has ended, the sink's connection is no longer this
        // request's to look at.
        if me.gone || me.served.is_some() {
            return Ok(());
        }
        if me.peer_fd.is_none() && me.gone_id.is_none() {
            // A kept FastCGI connection: the server layer tells (its
            // ABORT_REQUEST, its close), and the loop looks for the close too.
            let id = me.ctx.next_id.get();
            let queue = Arc::clone(&me.ctx.gone);
            // A write on the executor holds the sink (the first sends of a FastCGI
            // response go there): registered once it is back. regression (asgi-diff
            // HIGH): a task that waited in receive() while the other task's first
            // send was in flight (sse-starlette) never heard of the close.
            me.watch_later = me.sink.is_none() && me.busy;
            let told = me
                .sink
                .as_mut()
                .is_some_and(|sink| sink.notify_gone(Box::new(move || queue.push(id))));
            if told {
                me.ctx.next_id.set(id + 1);
                me.gone_id = Some(id);
                me.ctx
                    .gone_waiting
                    .borrow_mut()
                    .insert(id, slf.clone().unbind());
            }
        }
        // The server layer reads a kept connection in the acceptor, which the loop
        // does not look at while the worker is at --max-concurrency: its close would
        // reach the app only once another request ends. Peeked at then, it does at
        // once. (One reader per fd: of requests multiplexed on one connection, the
        // last to wait is looked for; the others learn it from the server layer.)
        let Some(fd) = me.peek_fd else {
            return Ok(());
        };
        if me.watching || (me.peer_fd.is_none() && !me.ctx.at_cap.get()) {
            return Ok(());
        }
        me.watching = true;
        let add = me.ctx.add_reader.clone_ref(py);
        drop(me);
        add.bind(py)
            .call1((fd, slf.getattr(intern!(py, "_peer_readable"))?))?;
        Ok(())
    }
}

/// The worker has reached `--max-concurrency` (`ctx.at_cap` set): the requests on
/// kept FastCGI connections that wait for the server layer's word of the front
/// server's close have the loop peek at their connection meanwhile.
pub fn peek_kept(py: Python<'_>, ctx: &Ctx) {
    let waiting: Vec<Py<Exchange>> = ctx
        .gone_waiting
        .borrow()
        .values()
        .map(|e| e.clone_ref(py))
        .collect();
    for ex in waiting {
        let ex = ex.bind(py);
        // One in the middle of a call of its own is left to the server layer.
        if ex.try_borrow_mut().is_err() {
            continue;
        }
        if let Err(e) = Exchange::watch(ex) {
            let _e = ex.borrow().span.clone().entered();
            tracing::debug!(error = %e, "cannot watch the connection for its close");
        }
    }
}

/// Work with the sink off the loop thread.
enum Job {
    Write(Vec<u8>, bool),
    /// The head if not sent yet, then the first `len` bytes of the app's `bytes`
    /// (`last`: the response is whole with them).
    WriteObject {
        head: Vec<u8>,
        body: Py<PyBytes>,
        len: usize,
        last: bool,
    },
    /// The rest of the head, then the file from its start.
    SendFile(Vec<u8>, std::fs::File, u64),
    /// The rest of the head and the file's first block, then the file read on from
    /// there to its end, or to the length given ([`super::io::send_stream`]).
    SendStream(Vec<u8>, std::fs::File, u64, Option<u64>),
    Flush,
}

thread_local! {
    /// The loop thread's `_job_done` calls of the sink jobs in flight, by id
    /// ([`JobDone`]).
    static JOBS_DONE: std::cell::RefCell<std::collections::HashMap<u64, Py<PyAny>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static JOB_IDS: Cell<u64> = const { Cell::new(0) };
}

/// Drops the `_job_done` calls of the sink jobs that never reported their end, once
/// the loop has stopped for good (none can run then): each holds its exchange. While
/// the loop serves they are bounded: one job per exchange at a time ([`Exchange::job`]
/// runs only when none is in flight), and an exchange with a job in flight is not
/// released, so it keeps its `--max-concurrency` place. Returns how many there were.
pub fn forget_jobs() -> usize {
    // Taken out first: dropping the calls may run Python code (an exchange's end)
    // that must not find the map borrowed.
    let left = JOBS_DONE.with(|j| std::mem::take(&mut *j.borrow_mut()));
    left.len()
}

/// Called on the loop (`call_soon_threadsafe`) when a sink job has ended: runs that
/// job's `_job_done`. Holds only its id, so the executor thread that schedules it
/// never holds the exchange.
#[pyclass(module = "postern", name = "JobDone", frozen)]
struct JobDone(u64);

#[pymethods]
impl JobDone {
    fn __call__(&self, py: Python<'_>, cf: &Bound<'_, PyAny>) -> PyResult<()> {
        let done = JOBS_DONE.with(|j| j.borrow_mut().remove(&self.0));
        match done {
            Some(done) => done.bind(py).call1((cf,)).map(drop),
            None => Ok(()),
        }
    }
}

/// The executor's done callback of a sink job, on its thread: schedules the job's
/// [`JobDone`] on the loop. The loop may have closed since (the stop's cut-off waits
/// for such writes a moment only): nothing is left to do then, and it is no error for
/// concurrent.futures to print to stderr.
#[pyclass(module = "postern", name = "SinkJobToLoop", frozen)]
struct ToLoop {
    id: u64,
    call_soon_threadsafe: Py<PyAny>,
}

#[pymethods]
impl ToLoop {
    fn __call__(&self, py: Python<'_>, cf: &Bound<'_, PyAny>) -> PyResult<()> {
        let done = Py::new(py, JobDone(self.id))?;
        match self.call_soon_threadsafe.bind(py).call1((done, cf)) {
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) => {
                tracing::debug!("a write came back after the event loop had closed");
                Ok(())
            }
            r => r.map(drop),
        }
    }
}

/// A blocking sink operation run by the default executor with the GIL released.
#[pyclass(module = "postern", name = "SinkJob", frozen)]
struct SinkJob {
    work: Mutex<Option<(Box<dyn Sink>, Job)>>,
    back: Mutex<Option<SinkDone>>,
}

/// The sink back from a [`SinkJob`], with what its operation returned.
type SinkDone = (Box<dyn Sink>, std::io::Result<()>);

#[pymethods]
impl SinkJob {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((mut sink, job)) = self.work.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return Ok(());
        };
        let r = if let Job::WriteObject {
            head,
            body,
            len,
            last,
        } = &job
        {
            // A `bytes` never changes, and `job` keeps it alive: read with the GIL
            // released.
            let body = body.bind(py);
            let data = &body.as_bytes()[..*len];
            py.detach(|| {
                if !head.is_empty() {
                    sink.write_all(head)?;
                }
                if *last {
                    sink.write_last(data)
                } else {
                    sink.write_all(data)
                }
            })
        } else {
            py.detach(|| run_job(sink.as_mut(), &job))
        };
        let failed = r.is_err();
        *self.back.lock().unwrap_or_else(|e| e.into_inner()) = Some((sink, r));
        if failed {
            return Err(gone_error());
        }
        Ok(())
    }
}

/// A [`Job`] that needs no Python object, with the GIL released.
fn run_job(sink: &mut dyn Sink, job: &Job) -> std::io::Result<()> {
    match job {
        Job::Write(data, true) => sink.write_last(data),
        Job::Write(data, false) => sink.write_all(data),
        Job::SendFile(head, f, len) => sink
            .write_all(head)
            .and_then(|()| send_file_counted(sink, f, *len)),
        Job::SendStream(head, f, read, limit) => sink
            .write_all(head)
            .and_then(|()| super::io::send_stream(sink, f, *read, *limit)),
        Job::Flush => sink.flush(),
        // Read with the GIL held first ([`SinkJob::__call__`]).
        Job::WriteObject { .. } => Err(std::io::Error::other(
            "internal error: a write of a Python object ran without it",
        )),
    }
}

/// A pathsend file's pieces for [`send_file_counted`].
const FILE_PIECE: u64 = 1 << 20;

/// Sends the first `len` bytes of `f` with [`Sink::send_file`], a piece at a time, so
/// that a file that shrank while it was sent is reported with how much of it went
/// (`sent`, as the loop's writes report it): the sink only says it ended early. The
/// file's length is looked at before each piece (one fstat per MiB); a file that
/// shrank within a piece is reported with that piece's start.
fn send_file_counted(sink: &mut dyn Sink, f: &std::fs::File, len: u64) -> std::io::Result<()> {
    let mut off = 0;
    while off < len {
        let mut n = FILE_PIECE.min(len - off);
        let now = f.metadata().map_or(len, |m| m.len());
        let short = now < off + n;
        if short {
            n = now.saturating_sub(off);
        }
        if n > 0 {
            sink.send_file(f, off, n)
                .map_err(|e| super::io::file_error(e, f, Some(off), len))?;
            off += n;
        }
        if short {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            );
            return Err(super::io::file_error(e, f, Some(off), len));
        }
    }
    Ok(())
}

/// Reads a body that is not in memory, a chunk per call, on the executor.
#[pyclass(module = "postern", name = "BodyReader", frozen)]
pub struct ReadJob {
    reader: Mutex<Reader>,
    done: AtomicBool,
}

enum Reader {
    /// The spooled file, the next offset to read, and its length.
    File(std::fs::File, u64, u64),
    Stream(Box<dyn BodyStream>),
}

#[pymethods]
impl ReadJob {
    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let got: std::io::Result<(Option<Bytes>, bool)> = py.detach(|| {
            let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *r {
                Reader::File(f, pos, len) => {
                    use std::os::unix::fs::FileExt;
                    let want = (*len - *pos).min(READ_CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    // Positioned reads: the spooling left the file's offset at its end.
                    f.read_exact_at(&mut buf, *pos)?;
                    *pos += want as u64;
                    Ok((Some(Bytes::from(buf)), *pos < *len))
                }
                Reader::Stream(s) => match s.next_chunk()? {
                    Some(b) => Ok((Some(b), true)),
                    None => Ok((None, false)),
                },
            }
        });
        match got {
            Ok((chunk, more)) => {
                if !more {
                    self.done.store(true, Ordering::Release);
                }
                request_message(py, chunk.as_deref().unwrap_or(b""), more)
            }
            Err(e) => {
                // Cut short: the front server went away (or aborted the request).
                tracing::debug!(error = %e, "reading the request body failed");
                self.done.store(true, Ordering::Release);
                disconnect_message(py)
            }
        }
    }
}

#[pymethods]
impl Exchange {
    /// `await receive()`.
    fn receive<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        if let Some(m) = me.given_back.take() {
            drop(me);
            return ready_from(slf, m.into_bound(py));
        }
        // After the response (or from a request whose task is over: a receive kept
        // by the app): `http.disconnect`, its body read or not, as the ASGI spec has
        // it ("if receive is called after a response has been sent") and uvicorn does.
        // regression (probe 406): an unread body came first, then the disconnect.
        if me.task_over || (me.served.is_some() && me.disconnect_due()) {
            return ready(py, Some(disconnect_message(py)?.into_any().unbind()));
        }
        match std::mem::replace(&mut me.body, BodyState::Done) {
            BodyState::Waiting(body) => {
                let reader = match body {
                    Body::Empty => {
                        return ready_from(slf, request_message(py, b"", false)?.into_any());
                    }
                    Body::Memory(b) => {
                        return ready_from(slf, request_message(py, &b, false)?.into_any());
                    }
                    Body::File(f, len) => Reader::File(f, 0, len),
                    Body::Stream(s) if s.pollable() => {
                        // Taken on the loop as it arrives (no thread per pending
                        // read).
                        let lio = me.lio(py)?;
                        let id = lio.next_id.get();
                        lio.next_id.set(id + 1);
                        let queue = Arc::clone(&lio.bodies);
                        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || queue.push(id));
                        me.body_id = Some(id);
                        lio.body_waiting
                            .borrow_mut()
                            .insert(id, slf.getattr(intern!(py, "_body_woken"))?.unbind());
                        me.body = BodyState::Polled(s, wake);
                        drop(me);
                        return Self::receive(slf);
                    }
                    Body::Stream(s) => Reader::Stream(s),
                };
                let job = Py::new(
                    py,
                    ReadJob {
                        reader: Mutex::new(reader),
                        done: AtomicBool::new(false),
                    },
                )?;
                me.body = BodyState::Reading(job);
                drop(me);
                Self::receive(slf)
            }
            BodyState::Reading(job) => {
                if let Some(msg) = me.read_kept.take() {
                    me.body = BodyState::Reading(job);
                    return ready_from(slf, msg.into_bound(py));
                }
                if job.get().done.load(Ordering::Acquire) && !me.read_in_flight {
                    drop(me);
                    return Self::receive(slf);
                }
                // One read in flight per body, whatever the receive() calls: a
                // receive() the app cancels (a timeout, Starlette's is_disconnected())
                // leaves its chunk to the next one instead of losing it.
                if !me.read_in_flight {
                    Self::start_read(slf, &mut me, &job)?;
                }
                me.body = BodyState::Reading(job);
                let waiter = me.ctx.create_future.bind(py).call0()?;
                // Those the app cancelled go first: an app may call receive() under a
                // timeout again and again while a slow body trickles in.
                Self::prune(py, &mut me.read_waiters);
                me.read_waiters.push_back(waiter.clone().unbind());
                Ok(waiter)
            }
            BodyState::Polled(s, wake) => {
                me.body = BodyState::Polled(s, wake);
                Self::prune(py, &mut me.read_waiters);
                if me.read_waiters.is_empty() {
                    if let Some((msg, refused)) = me.poll_body(py)? {
                        drop(me);
                        if let Some(r) = refused {
                            Self::answer_refused(slf, r)?;
                        }
                        return ready_from(slf, msg.into_any());
                    }
                }
                let waiter = me.ctx.create_future.bind(py).call0()?;
                // review2 X5: a receive() the app cancels must end the stream's wait.
                waiter.call_method1(
                    intern!(py, "add_done_callback"),
                    (slf.getattr(intern!(py, "_read_waiter_done"))?,),
                )?;
                me.read_waiters.push_back(waiter.clone().unbind());
                Ok(waiter)
            }
            BodyState::Done => {
                if me.disconnect_due() {
                    return ready(py, Some(disconnect_message(py)?.into_any().unbind()));
                }
                let fut = me.ctx.create_future.bind(py).call0()?;
                // Those the app cancelled go first: Starlette's is_disconnected() is a
                // receive() cancelled at once, maybe called for every event of a stream.
                me.waiters.retain(|f| pending(py, f));
                me.waiters.push(fut.clone().unbind());
                drop(me);
                Self::watch(slf)?;
                Ok(fut)
            }
        }
    }

    /// `await send(message)`.
    fn send<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::forked::guard();
        let py = slf.py();
        let message = message
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("send() takes a message dict"))?;
        let kind = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyValueError::new_err("the message has no 'type'"))?;
        let kind = kind
            .cast::<PyString>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "the message's 'type' must be a str, not {}",
                    kind.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?
            .to_str()?;
        let done = || Ok(slf.borrow().ctx.done.bind(py).clone().into_any());
        let refused = {
            let me = slf.borrow();
            me.send_refused
                .or(me.stalled.then_some(STALLED))
                .or(me.abandoned.then_some(ABANDONED))
        };
        if let Some(why) = refused.filter(|_| kind != "http.response.trailers") {
            return Err(ClientDisconnected::new_err(why));
        }
        // A send kept from a request whose app has returned. regression (probe 406):
        // it said "http.response.start sent twice for one request".
        if slf.borrow().task_over {
            return Err(PyRuntimeError::new_err(format!(
                "send({kind}) of a request that is over (its app has returned): each request has its own send() and receive()"
            )));
        }
        match kind {
            "http.response.start" => {
                let mut me = slf.borrow_mut();
                if me.gone {
                    return Err(gone_or_stalled(me.stalled, me.closed_by));
                }
                if let Err(e) = me.start(message) {
                    // As on the WSGI path: the app may catch it, the log keeps it.
                    let _e = me.span.enter();
                    tracing::error!(error = %e.value(py), "http.response.start refused; the app got this exception");
                    return Err(e);
                }
                drop(me);
                done()
            }
            "http.response.body" => {
                let body = match message.get_item(intern!(py, "body"))? {
                    None => None,
                    Some(b) if b.is_none() => None,
                    Some(b) => Some(b),
                };
                let more = match message.get_item(intern!(py, "more_body"))? {
                    Some(m) => m.is_truthy()?,
                    None => false,
                };
                // Checked whatever the response's state: a wrong type raises the same
                // TypeError after the response has ended as before.
                let len = body.as_ref().map_or(Ok(0), body_len)?;
                let mut me = slf.borrow_mut();
                if !me.started {
                    return Err(PyRuntimeError::new_err(
                        "http.response.body sent before http.response.start",
                    ));
                }
                if me.ended_at_length {
                    if !more {
                        me.ended_at_length = false;
                        me.cancel_grace(py);
                        // The response is finished for the app too.
                        if me.disconnect_due() {
                            me.wake_waiters(py);
                        }
                    }
                    let ended_whole =
                        matches!(me.served.as_ref().map(|s| s.end), Some(End::Complete(_)));
                    if me.gone && !ended_whole {
                        return Err(gone_or_stalled(me.stalled, me.closed_by));
                    }
                    // A head-only response's body is the GET's, never sent: no excess.
                    if len > 0 && !me.overflowed && !me.head_only() {
                        me.overflowed = true;
                        let _e = me.span.enter();
                        tracing::error!(content_length = me.content_length.unwrap_or(0), "the app sent more body than its Content-Length; the excess is not sent");
                    }
                    // Still streaming LENGTH_GRACE after the front server had the whole
                    // response (a HEAD's or a 204's head, or the whole Content-Length):
                    // the request is over for the app too, as `receive()` says by then.
                    // regression (probe 364 HIGH): a HEAD to an endless Starlette stream
                    // (spec 2.4: it watches no `receive()`, a send must raise) ran on
                    // for good, discarded, holding its --max-concurrency place: a few
                    // `curl -I` filled the worker. The grace is read from the clock as
                    // well: an app that never yields (its own loop of sends) keeps the
                    // grace's timer from running.
                    let over = me.grace_over
                        || me.ended_at.is_some_and(|t| t.elapsed() >= LENGTH_GRACE);
                    if more && over {
                        me.sent_past_end = true;
                        return Err(ClientDisconnected::new_err(PAST_END));
                    }
                    if !more {
                        drop(me);
                        return done();
                    }
                    // Discarded, but the loop gets a turn first: an endless generator
                    // with no wait of its own (`while True: yield data`) answering a
                    // HEAD froze every other task of the worker, as no send waited.
                    // regression (review 366).
                    let fut = me.ctx.create_future.bind(py).call0()?;
                    let lio = me.lio(py)?;
                    drop(me);
                    lio.call_soon
                        .bind(py)
                        .call1((helpers(py)?.settle.bind(py), &fut))?;
                    return Ok(fut);
                }
                if me.complete || me.served.is_some() {
                    if me.gone {
                        return Err(gone_or_stalled(me.stalled, me.closed_by));
                    }
                    return Err(PyRuntimeError::new_err(
                        "http.response.body sent after the response was complete",
                    ));
                }
                if me.gone {
                    return Err(gone_or_stalled(me.stalled, me.closed_by));
                }
                // A streamed response (more to come, short of any Content-Length): its
                // connection is watched from now on (once), if nothing more of the
                // request is to be read from it. A response in one body is not.
                if more
                    && !me.stream_watched
                    && me
                        .content_length
                        .is_none_or(|cl| me.body_sent.saturating_add(len as u64) < cl)
                    && me.input_whole()
                {
                    me.stream_watched = true;
                    drop(me);
                    Self::watch(slf)?;
                    me = slf.borrow_mut();
                }
                let waiting = me.unawaited(py);
                if waiting > super::io::MAX_UNAWAITED {
                    drop(me);
                    return Err(Self::overrun(slf, waiting)?);
                }
                // What goes of it: the excess over the Content-Length is cut below.
                let take = me.content_length.map_or(len, |cl| {
                    len.min(usize::try_from(cl - me.body_sent.min(cl)).unwrap_or(usize::MAX))
                });
                // A large body is sent from the app's object, kept until sent (a
                // bytearray or memoryview copied into a `bytes` first: the app may change
                // it once send() returns): by the loop, or over FastCGI by a write on
                // the executor (not one queued behind another: that one copies). Else
                // its bytes are copied once, straight from its buffer, just below (no
                // Python code runs before).
                let keep = !me.head_only()
                    && take >= super::io::KEEP_OBJECT
                    && (me.loop_w.is_some() || (!me.busy && me.sink.is_some()));
                let body = match body {
                    Some(b) if keep && !b.is_instance_of::<PyBytes>() => Some(body_copy(&b)?),
                    b => b,
                };
                let mut held = None;
                let bytes: &[u8] = match &body {
                    None => b"",
                    // SAFETY: copied (or, kept, a `bytes`) before any Python code runs.
                    Some(b) => unsafe { body_bytes(b, &mut held)? },
                };
                let mut data = bytes;
                if let Some(cl) = me.content_length {
                    let left = usize::try_from(cl - me.body_sent.min(cl)).unwrap_or(usize::MAX);
                    if data.len() > left {
                        if !me.overflowed {
                            me.overflowed = true;
                            let _e = me.span.enter();
                            tracing::error!(content_length = cl, "the app sent more body than its Content-Length; the excess is not sent");
                        }
                        data = &data[..left];
                    }
                }
                if me.head_only() {
                    if !me.head_sent && !more {
                        // HEAD: the length the GET would have, without the body.
                        let n = data.len();
                        let buf = me.head_bytes(Some(n), 0);
                        me.head_sent = true;
                        drop(me);
                        return Self::after_write(slf, Self::write(slf, buf, true));
                    }
                    data = &[];
                }
                // The whole Content-Length sent ends the response, as on the WSGI path:
                // FastCGI's END_REQUEST goes with these bytes, not with a last empty
                // body that may come after the front server has closed the connection.
                // A head-only response (HEAD, 204, 304) is whole once its head is out:
                // nginx closes a kept connection as soon as it has a HEAD's head.
                let last = !more
                    || me.head_only()
                    || me
                        .content_length
                        .is_some_and(|cl| me.body_sent + data.len() as u64 >= cl);
                me.ended_at_length = last && more;
                // The last body short of the app's Content-Length: the response ends
                // here, but broken off (`settle` aborts it), so the bytes go out as
                // any others: FastCGI's END_REQUEST must not go with them.
                // regression (hostile HIGH): over FastCGI they went with
                // END_REQUEST (complete), so nginx kept the client waiting for the
                // missing bytes, cached the short page, or let the next response on
                // that client connection fill them.
                let short = !more
                    && !me.head_only()
                    && me
                        .content_length
                        .is_some_and(|cl| me.body_sent + (data.len() as u64) < cl);
                let last_write = last && !short;
                if me.loop_w.is_some() {
                    let start = me.out.pushed();
                    {
                        let m = &mut *me;
                        m.body_sent += data.len() as u64;
                        if !m.head_sent {
                            m.head_sent = true;
                            let head = m.head_bytes((!more).then_some(data.len()), 0);
                            m.out.push_vec(head);
                        }
                        match &body {
                            // The app's bytes object is kept until sent: no copy (R5).
                            Some(b) if keep => {
                                let b = b.cast::<PyBytes>()?.clone().unbind();
                                m.out.push_object(b, data.len());
                            }
                            _ => m.out.push_copy(data),
                        }
                        if last {
                            m.complete = true;
                        } else if let Some(sink) = m.sink.as_mut() {
                            // More to come: a close before the end (the worker's exit,
                            // a --timeout kill) must not look like it (SO_LINGER 0 over
                            // TCP, once; cleared at the complete end). A one-shot
                            // response (its only body has more_body False) never pays.
                            // regression: deploy HIGH's ASGI side: a stream cut by a
                            // --timeout kill reached nginx as a FIN, a complete 200.
                            sink.under_way();
                        }
                    }
                    drop(me);
                    return Self::after_write(slf, Self::pump(slf, last, start));
                }
                me.body_sent += data.len() as u64;
                if let Some(b) = body.as_ref().filter(|_| keep) {
                    // FastCGI frames the records around slices of it: no copy.
                    let head = if me.head_sent {
                        Vec::new()
                    } else {
                        me.head_sent = true;
                        me.head_bytes((!more).then_some(data.len()), 0)
                    };
                    if last {
                        me.complete = true;
                    }
                    let job = Job::WriteObject {
                        head,
                        body: b.cast::<PyBytes>()?.clone().unbind(),
                        len: data.len(),
                        last: last_write,
                    };
                    drop(me);
                    return Self::after_write(slf, Self::job(slf, job, None).map(Some));
                }
                let buf = if !me.head_sent {
                    me.head_sent = true;
                    let mut buf = me.head_bytes((!more).then_some(data.len()), data.len());
                    buf.extend_from_slice(data);
                    buf
                } else if data.is_empty() && !last {
                    drop(me);
                    return done();
                } else {
                    data.to_vec()
                };
                if short {
                    // Ended (not by `write`, which is not told it is the last).
                    me.complete = true;
                }
                drop(me);
                Self::after_write(slf, Self::write(slf, buf, last_write))
            }
            "http.response.pathsend" => {
                let path: std::path::PathBuf = message
                    .get_item(intern!(py, "path"))?
                    .ok_or_else(|| PyValueError::new_err("http.response.pathsend has no 'path'"))?
                    .extract()?;
                let mut me = slf.borrow_mut();
                if !me.started || me.head_sent || me.complete {
                    return Err(PyRuntimeError::new_err(
                        "http.response.pathsend must follow http.response.start, instead of any body",
                    ));
                }
                if me.gone {
                    return Err(gone_or_stalled(me.stalled, me.closed_by));
                }
                // Checked before anything is written, so the app can still answer.
                let named = |e: std::io::Error| {
                    let msg = format!("http.response.pathsend {}: {e}", path.display());
                    if e.kind() == std::io::ErrorKind::NotFound {
                        pyo3::exceptions::PyFileNotFoundError::new_err(msg)
                    } else {
                        pyo3::exceptions::PyOSError::new_err(msg)
                    }
                };
                // The specification asks for an absolute path; a relative one (what
                // Starlette's `FileResponse("static/x")` sends) is opened from the
                // working directory, as the app's own `open()` would, and as Granian
                // does. Refused, every such response was a 500.
                // O_NONBLOCK: the open of a FIFO waits for a writer (the loop would
                // hang); it is refused below, as anything but a regular file is.
                let file = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                        .open(&path)
                        .map_err(named)?
                };
                let meta = file.metadata().map_err(named)?;
                if !meta.is_file() {
                    use std::os::unix::fs::FileTypeExt;
                    let what = match meta.file_type() {
                        t if t.is_dir() => "a directory",
                        t if t.is_fifo() => "a FIFO",
                        t if t.is_socket() => "a socket",
                        t if t.is_char_device() || t.is_block_device() => "a device",
                        _ => "not a regular file",
                    };
                    return Err(PyValueError::new_err(format!(
                        "http.response.pathsend {} is {what}; only a regular file can be sent",
                        path.display()
                    )));
                }
                let len = meta.len();
                // A size of 0 may be a file whose content is made when read (/proc,
                // some FUSE files): it is read to its end, with no Content-Length
                // (but the app's own, which then bounds it), as the WSGI file_wrapper
                // iterates it. An empty file is sent as empty, with no Content-Length.
                // It stays O_NONBLOCK (its reads run on the loop or the io thread: one
                // that would block, a drained /proc/kmsg, fails instead), and its first
                // block is read now, so that a file that cannot be read at all raises
                // OSError while the app can still answer.
                let sized = len > 0;
                let first = if sized {
                    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
                        .map_err(|e| named(e.into()))?;
                    None
                } else if !me.head_only() && me.content_length != Some(0) {
                    match super::io::read_block(&file, 0, me.content_length) {
                        Ok(block) => Some(block.unwrap_or_default()),
                        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<super::io::FileReadFailed>()) {
                            Some(f) => {
                                return Err(named(std::io::Error::new(f.error.kind(), f.error.to_string())));
                            }
                            // Empty before the app's Content-Length: cut off as a file
                            // that shrank, when the stream finds it so again.
                            None => Some(Vec::new()),
                        },
                    }
                } else {
                    None
                };
                let head = me.head_bytes(sized.then_some(len as usize), 0);
                me.head_sent = true;
                let send_body = !me.head_only();
                let limit = me.content_length;
                if send_body {
                    me.body_sent = match limit {
                        Some(cl) if sized => cl.min(len),
                        Some(cl) => cl,
                        None => len,
                    };
                }
                let body_len = me.body_sent;
                drop(me);
                if !send_body || (sized && body_len == 0) || limit == Some(0) {
                    return Self::after_write(slf, Self::write(slf, head, true));
                }
                // The head goes with the GIL held when the socket takes it (as usual),
                // then the file with sendfile(2) on the executor, or from the loop
                // as the socket takes it when the sink can.
                let mut me = slf.borrow_mut();
                if me.loop_w.is_some() {
                    let start = me.out.pushed();
                    me.out.push_vec(head);
                    match first {
                        None => me.out.push_file(file, body_len),
                        Some(block) => {
                            let read = block.len() as u64;
                            me.out.push_vec(block);
                            me.out.push_stream(file, read, limit);
                            // Read to its end with no Content-Length: a cut would look
                            // like the end (as a body with more_body True, above).
                            if limit.is_none() {
                                if let Some(sink) = me.sink.as_mut() {
                                    sink.under_way();
                                }
                            }
                        }
                    }
                    me.complete = true;
                    drop(me);
                    return Self::after_write(slf, Self::pump(slf, true, start));
                }
                let Some(sink) = me.sink.as_mut() else {
                    return Err(gone_error());
                };
                let n = match sink.try_write(&head, false) {
                    Ok(n) => n,
                    Err(_) => {
                        me.set_gone(py);
                        return Err(gone_error());
                    }
                };
                me.complete = true;
                drop(me);
                if let Some(block) = first {
                    let read = block.len() as u64;
                    let mut rest = head[n..].to_vec();
                    rest.extend_from_slice(&block);
                    return Self::job(slf, Job::SendStream(rest, file, read, limit), None);
                }
                Self::job(slf, Job::SendFile(head[n..].to_vec(), file, body_len), None)
            }
            "http.response.trailers" => {
                let mut me = slf.borrow_mut();
                if !me.trailers_said {
                    me.trailers_said = true;
                    let _e = me.span.enter();
                    tracing::debug!("the app sent trailers; dropped (nginx cannot pass them over uwsgi, FastCGI or SCGI)");
                }
                drop(me);
                done()
            }
            other => Err(PyValueError::new_err(format!(
                "send() got a message of type {other:?}; an HTTP request takes http.response.start, http.response.body, http.response.pathsend or http.response.trailers"
            ))),
        }
    }

    /// The stop's cut-off gave this request's cancelled task its grace, and the task
    /// still runs (it caught the cancellation and went on, or awaits something that
    /// does not take it): the worker exits without it, so it is named and its response
    /// ended as a cut one now (stop.py's `cut_off`), with its access line; if the task
    /// ever ends, nothing more is said.
    /// regression (probe 355): such tasks were never named (a single process named
    /// none; under a master, 16 from the scoreboard).
    fn _cut_unended(slf: &Bound<'_, Self>, grace: f64) -> PyResult<()> {
        let (span, served, started_sending, gone) = {
            let mut me = slf.borrow_mut();
            if me.task_over {
                return Ok(());
            }
            me.task_over = true;
            me.abandoned = true;
            me.cut_at_stop = true;
            (me.span.clone(), me.served.is_some(), me.head_sent, me.gone)
        };
        {
            let _e = span.enter();
            if gone {
                tracing::debug!("this request's task did not end within {grace}s of its cancellation; its client had gone");
                Self::settle(slf, None)?;
            } else {
                tracing::warn!("this request's task did not end within {grace}s of its cancellation (it caught the CancelledError, or awaits something that ignores it)");
                Self::end_cut(slf, served, started_sending)?;
            }
        }
        Self::release(slf)
    }

    /// A write on an executor thread holds the sink (stop.py's `cut_off` waits for it).
    #[getter]
    fn _writing(&self) -> bool {
        self.busy
    }

    /// The request, as the `--timeout` dump names its task: method, target, id.
    fn _describe(&self) -> String {
        let text =
            |k: &[u8]| String::from_utf8_lossy(self.head.get(k).unwrap_or(b"-")).into_owned();
        format!(
            "{} {} request_id={}",
            text(b"REQUEST_METHOD"),
            text(b"REQUEST_URI"),
            self.request_id.as_str()
        )
    }

    /// A `receive()` waiting for a polled body is done (answered, or cancelled by the
    /// app): with none left waiting, the stream no longer counts the app as waiting
    /// for its input (else a FastCGI connection reads on past its budget for it,
    /// dropping its other requests' bodies).
    fn _read_waiter_done(slf: &Bound<'_, Self>, _fut: &Bound<'_, PyAny>) {
        let py = slf.py();
        let Ok(mut me) = slf.try_borrow_mut() else {
            return;
        };
        Self::prune(py, &mut me.read_waiters);
        if me.read_waiters.is_empty() {
            if let BodyState::Polled(s, _) = &mut me.body {
                s.forget_wake();
            }
        }
    }

    /// A body read finished: to the receive() waiting for it, or kept for the next.
    fn _read_done(slf: &Bound<'_, Self>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let msg = match fut.call_method0(intern!(py, "result")) {
            Ok(m) => m,
            Err(_) => disconnect_message(py)?.into_any(),
        };
        let mut me = slf.borrow_mut();
        me.read_in_flight = false;
        let mut msg = Some(msg);
        while let Some(w) = me.read_waiters.pop_front() {
            if !waited_for(py, &w) {
                continue;
            }
            w.bind(py)
                .call_method1(intern!(py, "set_result"), (msg.take(),))?;
            break;
        }
        if let Some(m) = msg {
            me.read_kept = Some(m.unbind());
            return Ok(());
        }
        // More receive() calls wait: the next chunk for them, or, past the body's
        // end, the disconnect like any receive() after the body.
        Self::prune(py, &mut me.read_waiters);
        if me.read_waiters.is_empty() {
            return Ok(());
        }
        let job = match &me.body {
            BodyState::Reading(job) if !job.get().done.load(Ordering::Acquire) => {
                Some(job.clone_ref(py))
            }
            _ => None,
        };
        if let Some(job) = job {
            return Self::start_read(slf, &mut me, &job);
        }
        let rest = std::mem::take(&mut me.read_waiters);
        me.waiters.extend(rest);
        if me.disconnect_due() {
            me.wake_waiters(py);
            return Ok(());
        }
        drop(me);
        Self::watch(slf)
    }

    /// The sink is back from the executor (`fut`: what `send()` returned; `_cf`: the
    /// executor's future, done).
    fn _job_done(
        slf: &Bound<'_, Self>,
        job: &Bound<'_, SinkJob>,
        fut: &Bound<'_, PyAny>,
        _cf: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let job = job.get();
        let back = job
            .back
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .or_else(|| {
                // The job never ran (the executor shut down): the sink is still in it.
                let work = job.work.lock().unwrap_or_else(|e| e.into_inner()).take();
                work.map(|(sink, _)| {
                    let e = std::io::Error::other("the write was dropped before it ran");
                    (sink, Err(e))
                })
            });
        // A pathsend file that shrank (review2 X4b): cut off, not a client gone; the
        // app's send() returns as over uwsgi/SCGI (where it has returned before).
        let mut shrank = false;
        let extra = std::mem::take(&mut slf.borrow_mut().job_extra);
        let ok = {
            let mut me = slf.borrow_mut();
            me.busy = false;
            // Completed below (those still pending).
            me.job_futs.clear();
            match back {
                Some((sink, r)) => {
                    me.sink = Some(sink);
                    if let Err(e) = r {
                        shrank = {
                            let _e = me.span.enter();
                            super::io::write_failed(&e)
                        };
                        if !shrank {
                            me.gone_by(py, &e);
                        }
                        false
                    } else {
                        true
                    }
                }
                None => {
                    me.set_gone(py);
                    false
                }
            }
        };
        for fut in std::iter::once(fut.clone()).chain(extra.into_iter().map(|f| f.into_bound(py))) {
            if pending(py, &fut.clone().unbind()) {
                if ok || shrank {
                    fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
                } else {
                    let (stalled, by) = {
                        let me = slf.borrow();
                        (me.stalled, me.closed_by)
                    };
                    fail_send(py, &fut.clone().unbind(), gone_or_stalled(stalled, by))?;
                }
            }
        }
        {
            let mut me = slf.borrow_mut();
            // The response ended with this write only if it was complete and nothing
            // waits behind it: a last body queued behind it (`complete` already set)
            // means the close came before the response was whole.
            let ended = me.complete && me.queued.is_none();
            if std::mem::take(&mut me.closed_in_job) && ok && !ended && !me.gone {
                let _e = me.span.enter();
                tracing::debug!("the front server closed the connection (client gone)");
                drop(_e);
                me.set_gone(py);
            }
        }
        if std::mem::take(&mut slf.borrow_mut().watch_later) {
            Self::watch(slf)?;
        }
        if shrank || slf.borrow().send_refused.is_some() {
            // Cut off (the write that was in flight has ended).
            let code = slf.borrow().code;
            Self::settle(slf, Some(End::Incomplete(code)))?;
        }
        // A loop callback, not a step: the sends queued in the step that ran last are
        // told apart now (the forgotten ones settled and dropped), not carried into
        // the next write, where a front server that reads nothing would keep them
        // pending until it goes.
        step_over();
        let _ = slf.borrow_mut().unawaited(py);
        let next = slf.borrow_mut().queued.take();
        if let Some(q) = next {
            let futs: Vec<SendFut> = q.futs.into_iter().map(|(f, _)| f).collect();
            if ok && !slf.borrow().gone {
                // One write for them all: each send's future is done when it ends.
                let first = futs.first().map(|f| f.fut.bind(py).clone());
                slf.borrow_mut().job_extra =
                    futs.iter().skip(1).map(|f| f.fut.clone_ref(py)).collect();
                Self::job(slf, Job::Write(q.data, q.last), first)?;
                slf.borrow_mut().job_futs = futs;
            } else {
                let (stalled, by) = {
                    let me = slf.borrow();
                    (me.stalled, me.closed_by)
                };
                for qf in futs.into_iter().map(|f| f.fut).filter(|f| pending(py, f)) {
                    fail_send(py, &qf, gone_or_stalled(stalled, by))?;
                }
            }
        }
        let (complete, gone, over) = {
            let me = slf.borrow();
            (me.complete, me.gone, me.task_over)
        };
        if complete || gone || over {
            Self::settle(slf, None)?;
            if over && slf.borrow().served.is_none() && !slf.borrow().busy {
                // The task ended while this write was in flight, incomplete.
                let code = slf.borrow().code;
                Self::settle(slf, Some(End::Incomplete(code)))?;
            }
            Self::release(slf)?;
        }
        Ok(())
    }

    /// The connection is readable while a `receive()` waits: the front server closed
    /// it (EOF or reset) when the client went away.
    fn _peer_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        let Some(fd) = me.peek_fd else {
            return Ok(());
        };
        if me.sink.is_none() && !me.busy {
            me.unwatch(py);
            return Ok(());
        }
        // SAFETY: the fd is the sink's connection, which the sink keeps open (held by
        // this exchange or by its write on the executor; it is unwatched before the
        // sink is finished).
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let r = rustix::net::recv(b, &mut one, flags);
        let closed = match &r {
            Ok(((got, _), _)) => got.is_empty(),
            Err(e) => !matches!(*e, rustix::io::Errno::AGAIN | rustix::io::Errno::INTR),
        };
        if closed && me.busy {
            // Closed while a write runs on the executor: that write may have ended
            // the response (FastCGI's END_REQUEST), and nginx closed a connection it
            // does not keep (keepalive_requests, its pool full, no keep-conn) before
            // the loop heard the write end. Its end tells: `_job_done`.
            me.closed_in_job = true;
            me.unpeek(py);
            return Ok(());
        }
        match r {
            Ok(((&mut [], _), _)) => {
                let _e = me.span.enter();
                tracing::debug!("the front server closed the connection (client gone)");
                drop(_e);
                me.set_gone(py);
            }
            Ok(_) if me.protocol == Protocol::FastCgi => {
                // Input after a complete request: nothing this protocol sends without
                // keep-conn, another request's records or an abort with it (the
                // server layer's reader may own the connection: leave it to it, and
                // to tell of an abort); stop looking (a level-triggered reader would
                // spin on it).
                me.unpeek(py);
            }
            Ok(_) => {
                // Input after a complete uwsgi/SCGI request (nothing else reads this
                // socket now): read and dropped, what is left at the next wake-up
                // (a level-triggered reader would spin on it), and still watched:
                // the front server closing the connection later is still the
                // client gone (unwatching here kept that from the app's receive()).
                let mut drop_buf = [std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
                let _ = rustix::net::recv(b, &mut drop_buf, rustix::net::RecvFlags::DONTWAIT);
                if me.protocol == Protocol::Scgi && !std::mem::replace(&mut me.extra_input, true) {
                    let _e = me.span.enter();
                    tracing::warn!("the front server sent more body after CONTENT_LENGTH bytes: the app saw it cut short (nginx's scgi_request_buffering off announces only the bytes it had read: leave it on)");
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _e = me.span.enter();
                tracing::debug!(error = %e, "the connection failed (client gone)");
                drop(_e);
                me.set_gone(py);
            }
        }
        Ok(())
    }

    /// [`super::io::BodyWakes`]: more of the body is there.
    fn _body_woken(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::body_woken(slf)
    }

    /// The end of the loop iteration in which the app sent small chunks.
    fn _flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut me = slf.borrow_mut();
        me.flush_soon = false;
        if me.writing || me.gone || me.out.is_empty() {
            return Ok(());
        }
        drop(me);
        Self::flush(slf)?;
        Ok(())
    }

    /// The socket has room again.
    fn _writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.borrow().writing {
            return Ok(());
        }
        Self::flush(slf)?;
        Ok(())
    }

    /// [`LENGTH_GRACE`] has passed since the response ended at its Content-Length and
    /// the app's last body has not come: a `receive()` waiting returns
    /// `http.disconnect` now.
    fn _length_grace(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        me.length_grace = None;
        if me.ended_at_length {
            me.grace_over = true;
            if me.disconnect_due() {
                me.wake_waiters(py);
            }
        }
        Ok(())
    }

    /// The front server has taken nothing for the write timeout: it is gone.
    fn _write_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        me.write_timer = None;
        let Some((fd, timeout)) = me.loop_w else {
            return Ok(());
        };
        if !me.writing {
            return Ok(());
        }
        // The descriptor is open while the sink is.
        if me.last_progress.elapsed() >= timeout && me.sink.is_some() && has_room(Some(fd)) {
            // The socket is tried once before the front server is called idle: after
            // the whole process was stopped (SIGSTOP, a frozen cgroup, a paused VM, a
            // debugger) the loop can run this timer before it has seen the room the
            // front server made meanwhile (the stop interrupts the loop's wait, which
            // then returns no events once its deadline has passed). Only when the
            // socket says it has room (POLLOUT, what the loop's writer waits for).
            // regression (probe 335): a TCP socket that says none still takes a packet
            // into the slack its peer's last acknowledgement freed; counted as
            // progress, that re-armed the timer, and a front server that read nothing
            // was cut at twice --read-timeout (uwsgi and SCGI over TCP).
            drop(me);
            if !Self::flush(slf)? {
                return Ok(());
            }
            me = slf.borrow_mut();
            if !me.writing || me.sink.is_none() || me.write_timer.is_some() {
                return Ok(());
            }
        }
        let idle = me.last_progress.elapsed();
        if idle < timeout {
            let lio = me.lio(py)?;
            drop(me);
            let t = lio.call_later.bind(py).call1((
                (timeout - idle).as_secs_f64() + 0.001,
                slf.getattr(intern!(py, "_write_timeout"))?,
            ))?;
            slf.borrow_mut().write_timer = Some(t.unbind());
            return Ok(());
        }
        {
            let _e = me.span.enter();
            tracing::warn!(
                "the front server read nothing for {timeout:?} (--read-timeout): the response is cut off and the connection closed"
            );
        }
        me.set_stalled(py);
        drop(me);
        Self::settle(slf, None)?;
        Self::release(slf)
    }

    /// The timer of the tasks running on after their complete response: each one
    /// past `--timeout` since it began gets its warning (once), and the timer is set
    /// again for the next one.
    fn _past_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let ctx = Rc::clone(&slf.borrow().ctx);
        ctx.after_due.set(None);
        let Some(timeout) = ctx.timeout else {
            return Ok(());
        };
        let now = Instant::now();
        let mut next = None;
        {
            let mut after = ctx.after.borrow_mut();
            while let Some(entry) = after.first_entry() {
                let due = entry.get().0 + timeout;
                if due > now {
                    next = Some(due);
                    break;
                }
                let (begun, span) = entry.remove();
                let _e = span.enter();
                tracing::warn!(
                    ran_s = begun.elapsed().as_secs(),
                    "this request's task still runs past --timeout ({}s) after its response was sent whole: work the app does after its response (a FastAPI/Starlette BackgroundTasks task) is not killed by --timeout (the request is served); it keeps its --max-concurrency place, and a stop waits for it up to --graceful-timeout",
                    timeout.as_secs_f64()
                );
            }
        }
        if let Some(due) = next {
            Self::arm_after(slf, &ctx, due)?;
        }
        Ok(())
    }
}

impl Exchange {
    /// The app's call returned (`None`) or raised: called by the request's task itself,
    /// in its last step ([`super::serve`]), so the response ends in the same loop
    /// iteration.
    pub(super) fn task_done(slf: &Bound<'_, Self>, raised: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let failure = raised.map(|e| {
            if e.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py) {
                // A task cancelled after the client went away is no bug of the app's
                // (a framework may cancel its handler when it hears http.disconnect).
                let gone = slf.borrow().gone;
                if !gone && slf.borrow().ctx.stop.cut_taken() {
                    slf.borrow_mut().cut_at_stop = true;
                }
                let err =
                    pyo3::exceptions::PyException::new_err("the request's task was cancelled");
                if gone {
                    err.set_cause(py, Some(gone_error()));
                }
                err
            } else {
                e
            }
        });
        Self::end_with(slf, failure)
    }
}

impl Exchange {
    /// What a polled body has now, as one `http.request` message (the chunks that are
    /// there, up to [`READ_CHUNK`]); `None` while nothing is (the stream wakes the
    /// loop). Past the end (or a cut), the body is done; `true` with the message: the
    /// body passed --max-body.
    fn poll_body<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyDict>, Option<Refused>)>> {
        let BodyState::Polled(s, wake) = &mut self.body else {
            return Ok(None);
        };
        let mut got: Vec<Bytes> = Vec::new();
        let mut size = 0;
        let mut end: Option<std::io::Result<()>> = None;
        while size < READ_CHUNK {
            match s.poll_chunk(wake) {
                std::task::Poll::Ready(Ok(Some(b))) => {
                    size += b.len();
                    got.push(b);
                }
                std::task::Poll::Ready(Ok(None)) => {
                    end = Some(Ok(()));
                    break;
                }
                std::task::Poll::Ready(Err(e)) => {
                    end = Some(Err(e));
                    break;
                }
                std::task::Poll::Pending => {
                    if !got.is_empty() {
                        // What was taken ends this wait: the app is not waiting for
                        // more until its next receive().
                        s.forget_wake();
                    }
                    break;
                }
            }
        }
        if got.is_empty() && end.is_none() {
            return Ok(None);
        }
        // A failure after some chunks: those first (the failure stays: the next poll
        // finds it again).
        let finished = match end {
            Some(Ok(())) => true,
            Some(Err(_)) if !got.is_empty() => false,
            Some(Err(e)) => {
                self.body_done(py);
                let refused = match e.kind() {
                    crate::wsgi::BODY_TOO_LARGE => Some(Refused::TooLarge),
                    // regression (review of cbddb75): a FastCGI STDIN ended short of
                    // CONTENT_LENGTH was taken for the client gone: an app that raised
                    // on the disconnect was answered 500 with its traceback, where the
                    // WSGI path answers 400.
                    crate::wsgi::input::BODY_SHORT => Some(Refused::Short),
                    _ if crate::wsgi::input::is_dropped(&e) => Some(Refused::Dropped),
                    _ => None,
                };
                if e.kind() == crate::wsgi::input::BODY_GONE {
                    // The client is gone: what the app does next (returns, raises
                    // because of it) is not its failure, and nothing is answered, as
                    // on the WSGI path.
                    // postern closed the connection itself (--read-timeout, bad
                    // input): said so. regression (probe 374): as the client gone.
                    let by = crate::wsgi::input::closed_by(&e);
                    let why = by.map_or(
                        "the front server aborted the request or closed the connection",
                        crate::wsgi::input::ClosedBy::says,
                    );
                    {
                        let _e = self.span.enter();
                        if crate::wsgi::input::is_unnamed_gone(&e) {
                            // Past the bad-input limit's named lines: in its summary.
                            tracing::debug!(error = %e, "could not read the request body: {why}; receive() returns http.disconnect, nothing is answered");
                        } else {
                            tracing::warn!(error = %e, "could not read the request body: {why}; receive() returns http.disconnect, nothing is answered");
                        }
                    }
                    self.closed_by = by;
                    self.set_gone(py);
                } else {
                    let _e = self.span.enter();
                    tracing::debug!(error = %e, "reading the request body failed");
                }
                return Ok(Some((disconnect_message(py)?, refused)));
            }
            None => false,
        };
        if finished {
            self.body_done(py);
        }
        let body = match got.len() {
            1 => PyBytes::new(py, &got[0]),
            _ => PyBytes::new_with(py, size, |buf| {
                let mut at = 0;
                for b in &got {
                    buf[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
                Ok(())
            })?,
        };
        let d = PyDict::new(py);
        d.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
        d.set_item(intern!(py, "body"), body)?;
        d.set_item(intern!(py, "more_body"), !finished)?;
        Ok(Some((d, None)))
    }

    /// The body is all taken (or cut): no more wake-ups for it.
    fn body_done(&mut self, py: Python<'_>) {
        self.body = BodyState::Done;
        if let Some(id) = self.body_id.take() {
            if let Ok(lio) = self.lio(py) {
                lio.body_waiting.borrow_mut().remove(&id);
            }
        }
    }

    /// The server layer queued more of a polled body: to the `receive()` calls that
    /// wait, in order.
    fn body_woken(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let mut me = slf.borrow_mut();
            Self::prune(py, &mut me.read_waiters);
            if me.read_waiters.is_empty() {
                // Those pruned were dropped unawaited: nobody waits for the stream.
                if let BodyState::Polled(s, _) = &mut me.body {
                    s.forget_wake();
                }
                return Ok(());
            }
            if !matches!(me.body, BodyState::Polled(..)) {
                // Past the body: the rest wait for the disconnect, as after any body.
                let rest = std::mem::take(&mut me.read_waiters);
                me.waiters.extend(rest);
                if me.disconnect_due() {
                    me.wake_waiters(py);
                    return Ok(());
                }
                drop(me);
                return Self::watch(slf);
            }
            let Some((msg, refused)) = me.poll_body(py)? else {
                return Ok(());
            };
            if let Some(w) = me.read_waiters.pop_front() {
                w.bind(py).call_method1(intern!(py, "set_result"), (msg,))?;
            }
            drop(me);
            if let Some(r) = refused {
                Self::answer_refused(slf, r)?;
            }
        }
    }

    /// The body failed for the front server's input: too large, or short.
    fn answer_refused(slf: &Bound<'_, Self>, why: Refused) -> PyResult<()> {
        match why {
            Refused::TooLarge => Self::answer_too_large(slf),
            Refused::Short => Self::answer_input(slf, &SHORT),
            Refused::Dropped => Self::answer_input(slf, &DROPPED),
        }
    }

    /// The body failed for its input, not for the app (the lane has logged why, at
    /// WARN): answered as on the WSGI path if the response has not started, else the
    /// response is cut. The app's next `send()` raises, and what it raises on the
    /// `http.disconnect` it got is not its failure (`input_refused`).
    /// regression (probe 335, MEDIUM): for a body postern dropped, `receive()` said
    /// `http.disconnect` and the app's answer, if any, went out as if it had read the
    /// body (the WSGI path answered 500 with the app's traceback at ERROR).
    fn answer_input(slf: &Bound<'_, Self>, refusal: &InputRefusal) -> PyResult<()> {
        let mut me = slf.borrow_mut();
        if me.send_refused.is_some() || me.served.is_some() || me.gone {
            return Ok(());
        }
        let _e = me.span.clone().entered();
        if me.head_sent {
            me.send_refused = Some(refusal.cut);
            tracing::debug!(
                "{}; the response had started, so it is cut off",
                refusal.why
            );
            let code = me.code;
            drop(me);
            return Self::settle(slf, Some(End::Incomplete(code)));
        }
        me.send_refused = Some(refusal.answered);
        me.input_refused = true;
        tracing::debug!("{}; answered {}", refusal.why, refusal.code);
        drop(me);
        Self::answer_plain(slf, refusal.code, refusal.body)
    }

    /// The body (streamed without CONTENT_LENGTH) passed --max-body: 413 as when the
    /// announced length is over it, if the response has not started; else the
    /// response is cut. The app's next `send()` raises (an `OSError`).
    fn answer_too_large(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut me = slf.borrow_mut();
        if me.send_refused.is_some() || me.served.is_some() || me.gone {
            return Ok(());
        }
        let _e = me.span.clone().entered();
        if me.head_sent {
            // review2 X4: this (and the app's send()) said "answered 413" although
            // the response was cut.
            me.send_refused = Some("the request body (sent without a Content-Length) is over --max-body; the response had started, so postern cut it off (no 413) and the request is over");
            tracing::warn!("the request body (sent without CONTENT_LENGTH) is over --max-body; the response had started, so it is cut off");
            let code = me.code;
            drop(me);
            return Self::settle(slf, Some(End::Incomplete(code)));
        }
        me.send_refused = Some("the request body (sent without a Content-Length) is over --max-body: postern answered 413 and the request is over");
        tracing::warn!(
            "the request body (sent without CONTENT_LENGTH) is over --max-body; answered 413"
        );
        drop(me);
        Self::answer_plain(slf, 413, b"Content Too Large\n")
    }

    /// The app sends more while `waiting` bytes of earlier `send()`s it did not wait
    /// for (it cancelled them, or never awaited them) still wait for the front server, over
    /// [`super::io::MAX_UNAWAITED`]: the response is cut off (once a write in flight
    /// has ended) instead of holding all it sends; this `send()` and the later ones
    /// raise.
    fn overrun(slf: &Bound<'_, Self>, waiting: usize) -> PyResult<PyErr> {
        let py = slf.py();
        let why = "send() called while over 1 MiB of earlier send()s the app did not wait for (it cancelled them, or never awaited them) still waited for the front server to read them: postern cut the response off";
        let mut me = slf.borrow_mut();
        me.send_refused = Some(why);
        {
            let _e = me.span.enter();
            tracing::warn!(waiting, "the app sent more while over 1 MiB of earlier send()s it did not wait for (cancelled, or never awaited) were still waiting to be written to the front server; the response is cut off (await each send(): it returns once its bytes can go)");
        }
        // Queued behind a write in flight, or waiting on the loop: goes no further
        // (the sends still awaited among them learn it).
        me.fail_sends(py, || ClientDisconnected::new_err(why));
        // Nothing more comes from the app: its task may end without a last body.
        me.complete = true;
        let code = me.code;
        drop(me);
        Self::settle(slf, Some(End::Incomplete(code)))?;
        Ok(ClientDisconnected::new_err(why))
    }

    /// Loop-driven writes (the sink has a socket of its own): sends what `out` holds
    /// if `now` (the response's last bytes) or if too much waits; else the send is
    /// left to the end of this loop iteration, so what the app sends before it next
    /// waits leaves in the same send (nothing is held back longer: the loop runs the
    /// send as soon as the app's task yields). `None`: `await send(...)` goes on at
    /// once; a future: it waits until the socket has taken all but
    /// [`super::io::LOW`] bytes up to the end of this message (backpressure), after
    /// the sends before it that still wait (`start`: where this message began in
    /// what `out` was pushed).
    fn pump<'py>(
        slf: &Bound<'py, Self>,
        now: bool,
        start: u64,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        if me.gone {
            return Err(gone_or_stalled(me.stalled, me.closed_by));
        }
        // A send after one that still waits waits too: each completes in call order.
        // The sends the app cancelled or forgot left the queue in this send()'s
        // `unawaited`, just before (their bytes stay in `out`: kept, every later
        // send() scanned them all, quadratic in a loop of tiny cancelled sends to a
        // front server that reads nothing). Only a body send finds the queue
        // non-empty: the other writes (pathsend, postern's own answers) come before
        // any body.
        let behind = !me.send_waiters.is_empty();
        if !me.writing {
            if !now && !behind && me.out.queued() < super::io::HIGH {
                if !me.flush_soon && !me.out.is_empty() {
                    me.flush_soon = true;
                    let lio = me.lio(py)?;
                    drop(me);
                    lio.call_soon
                        .bind(py)
                        .call1((slf.getattr(intern!(py, "_flush"))?,))?;
                }
                return Ok(None);
            }
            drop(me);
            if !Self::flush(slf)? {
                return Err(gone_error());
            }
            me = slf.borrow_mut();
        }
        if me.out.queued() > super::io::HIGH || (behind && !me.out.is_empty()) {
            let fut = me.ctx.create_future.bind(py).call0()?;
            let end = me.out.pushed();
            let fut_w = SendFut::new(&fut, &*me.lio(py)?)?;
            me.send_waiters.push_back(SendWait {
                fut: fut_w,
                start,
                end,
            });
            return Ok(Some(fut));
        }
        Ok(None)
    }

    /// Writes what the socket takes of `out` now; then waits for room for the rest,
    /// or, all of it out, ends a complete response. False: the front server is gone.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let mut guard = slf.borrow_mut();
        let me = &mut *guard;
        let Some(sink) = me.sink.as_mut() else {
            return Ok(false);
        };
        // Progress is any byte the socket took, a file's too (a pathsend's file is
        // not in `queued`: counting that alone cut steady file downloads at
        // --read-timeout).
        let before = me.out.sent();
        let r = me.out.write(py, sink.as_mut());
        match r {
            Err(e) => {
                // review2 X4b: a pathsend file that shrank is the server's fault: the
                // response is cut off, the client did not go away.
                let cut = {
                    let _e = me.span.enter();
                    super::io::write_failed(&e)
                };
                let end = cut.then_some(End::Incomplete(me.code));
                if !cut {
                    me.gone_by(py, &e);
                }
                drop(guard);
                Self::settle(slf, end)?;
                Self::release(slf)?;
                Ok(cut)
            }
            Ok(all) => {
                if me.out.sent() != before || all {
                    me.last_progress = std::time::Instant::now();
                }
                // The sends whose message is out, all but LOW bytes of it, go on, in
                // call order.
                let sent = me.out.sent();
                while let Some(w) = me.send_waiters.front() {
                    if !all && w.end.saturating_sub(sent) > super::io::LOW as u64 {
                        break;
                    }
                    let w = me.send_waiters.pop_front().map(|w| w.fut.fut);
                    if let Some(w) = w.filter(|w| pending(py, w)) {
                        w.bind(py)
                            .call_method1(intern!(py, "set_result"), (py.None(),))?;
                    }
                }
                if all {
                    me.stop_writing(py);
                    let complete = me.complete;
                    drop(guard);
                    if complete {
                        Self::settle(slf, None)?;
                        Self::release(slf)?;
                    }
                    return Ok(true);
                }
                if !me.writing {
                    let Some((fd, timeout)) = me.loop_w else {
                        return Ok(true);
                    };
                    let lio = me.lio(py)?;
                    me.writing = true;
                    drop(guard);
                    lio.add_writer
                        .bind(py)
                        .call1((fd, slf.getattr(intern!(py, "_writable"))?))?;
                    let t = lio.call_later.bind(py).call1((
                        timeout.as_secs_f64(),
                        slf.getattr(intern!(py, "_write_timeout"))?,
                    ))?;
                    slf.borrow_mut().write_timer = Some(t.unbind());
                }
                Ok(true)
            }
        }
    }

    /// After a body write: `Ready(None)` when it went out (and the response ended if it
    /// was the last), else the write's future.
    fn after_write<'py>(
        slf: &Bound<'py, Self>,
        w: PyResult<Option<Bound<'py, PyAny>>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match w? {
            Some(fut) => Ok(fut),
            None => {
                if slf.borrow().complete {
                    Self::settle(slf, None)?;
                }
                Ok(slf.borrow().ctx.done.bind(py).clone().into_any())
            }
        }
    }

    /// Answers `status` without running the app (the scope could not be built).
    pub fn answer_refusal(slf: &Bound<'_, Self>, status: u16) -> PyResult<()> {
        {
            let mut me = slf.borrow_mut();
            me.task_over = true;
            me.code = status;
            me.started = true;
            me.is_head = false;
            me.head_sent = true;
        }
        let reason = match resp::reason_phrase(status) {
            "" => "Error",
            r => r,
        };
        let style = slf.borrow().style;
        let buf = resp::plain_response(style, status, reason, &format!("{reason}\n"));
        let _ = Self::after_write(slf, Self::write(slf, buf, true));
        if slf.borrow().gone {
            Self::settle(slf, None)?;
        }
        Self::release(slf)
    }
}
