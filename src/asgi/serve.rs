//! What each request's asyncio task runs: the app's coroutine, wrapped so that the
//! request ends inside the task's last step (the response goes out in the same loop
//! iteration, with no done callback and no extra turn of the loop).
//!
//! The wrapper is a type made with the C API, not a Python `async def`: the task steps
//! it through its `am_send` slot, which steps the app's coroutine with `PyIter_Send`
//! and, when that returns or raises, ends the exchange ([`Exchange::task_done`]) at
//! once. A Python wrapper cost a coroutine object and a frame per request, a frame on
//! every step and a call to end the request (about 2k instructions a request, measured
//! with `benches/instructions.py --scenarios asgi-hello`), and its frame showed in
//! every traceback of the app's (`File "postern_asgi.py", line 3, in serve`).
//!
//! To asyncio it is a coroutine (`collections.abc.Coroutine`: `send`, `throw`,
//! `close`, `__await__`), and it behaves as `async def serve(coro, exchange): try:
//! await coro / except BaseException as e: end(exchange, e) / else: end(exchange,
//! None)` would:
//! - every exception of the app's call (a `CancelledError` included) is the request's,
//!   so the task itself ends quietly;
//! - a `throw` or `close` before the first step raises or closes without ending the
//!   exchange (the app's coroutine is dropped, and warns that it was never awaited);
//! - a `close` while suspended closes the app's coroutine and ends the exchange with
//!   `GeneratorExit`, and so does the garbage collector for a task dropped while
//!   suspended (`tp_finalize`);
//! - it steps at most once at a time ("coroutine already executing") and not after
//!   its end ("cannot reuse already awaited coroutine").
//!
//! For introspection it shows the app's coroutine: `cr_frame`, `cr_code`, `cr_await`,
//! `cr_running`, `__name__` and `__qualname__` are the app's, so `Task.get_stack()`,
//! `repr(task)` and postern's stack dumps show the app's frames. `_postern_exchange`
//! and `_postern_coro` are what postern's own Python code (the stop and the `--timeout`
//! dump) reads.
//!
//! An app whose call returns an awaitable that is not a coroutine (an object with
//! `__await__`) has it awaited by a small Python coroutine first (`ADAPT`).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::http::Exchange;

/// A step is under way (`send`, `throw`, `close` or the end of the request).
const RUNNING: u8 = 1;
/// Stepped, waiting for its next step.
const SUSPENDED: u8 = 2;
/// Ended (returned, raised, closed, or thrown into before it started).
const DONE: u8 = 3;
/// Made, never stepped (the allocation's zero).
const CREATED: u8 = 0;

#[repr(C)]
struct ServeObject {
    ob_base: ffi::PyObject,
    /// The app's coroutine (a strong reference); null once ended.
    coro: *mut ffi::PyObject,
    /// The request's [`Exchange`] (a strong reference); null only once cleared by
    /// the cyclic GC.
    exchange: *mut ffi::PyObject,
    state: u8,
}

static SERVE_TYPE: pyo3::sync::PyOnceLock<Py<PyType>> = pyo3::sync::PyOnceLock::new();

/// Wraps a non-coroutine awaitable in a coroutine (see the module's comment).
const ADAPT: &std::ffi::CStr = c"async def adapt(awaitable):
    return await awaitable
";

static ADAPT_FN: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// The coroutine a request's task runs: `coro` (what the app's call returned) ended by
/// `exchange`.
pub fn wrap<'py>(
    coro: Bound<'py, PyAny>,
    exchange: &Bound<'py, Exchange>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = coro.py();
    // SAFETY: with the GIL held; `coro` a valid object.
    let coro = if unsafe { ffi::PyCoro_CheckExact(coro.as_ptr()) } != 0 {
        coro
    } else {
        let adapt = ADAPT_FN.get_or_try_init(py, || {
            PyModule::from_code(py, ADAPT, c"postern/asgi/adapt.py", c"_postern_adapt")?
                .getattr("adapt")
                .map(Bound::unbind)
        })?;
        adapt.bind(py).call1((coro,))?
    };
    let tp = serve_type(py)?;
    // SAFETY: with the GIL held; `tp` is the type of `ServeObject`s (its basicsize),
    // zeroed and tracked by the GC at allocation (state CREATED); the references move
    // into the object, which releases them (`serve_clear`).
    unsafe {
        let o = ffi::PyType_GenericAlloc(tp.as_type_ptr(), 0);
        let o = Bound::from_owned_ptr_or_err(py, o)?;
        let s = &mut *o.as_ptr().cast::<ServeObject>();
        s.coro = coro.into_ptr();
        s.exchange = exchange.clone().into_any().into_ptr();
        Ok(o)
    }
}

fn serve_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    SERVE_TYPE
        .get_or_try_init(py, || {
            let method = |name: &'static std::ffi::CStr,
                          meth: ffi::PyMethodDefPointer,
                          flags: std::ffi::c_int,
                          doc: &'static std::ffi::CStr| ffi::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: meth,
                ml_flags: flags,
                ml_doc: doc.as_ptr(),
            };
            // CPython keeps pointers to these: made once, leaked with the type, which
            // lives as long as the process.
            let methods: &'static mut [ffi::PyMethodDef] = Box::leak(Box::new([
                method(
                    c"send",
                    ffi::PyMethodDefPointer {
                        PyCFunction: serve_send_method,
                    },
                    ffi::METH_O,
                    c"Steps the app's coroutine; its end ends the request.",
                ),
                method(
                    c"throw",
                    ffi::PyMethodDefPointer {
                        PyCFunction: serve_throw,
                    },
                    ffi::METH_VARARGS,
                    c"Throws into the app's coroutine; its end ends the request.",
                ),
                method(
                    c"close",
                    ffi::PyMethodDefPointer {
                        PyCFunction: serve_close,
                    },
                    ffi::METH_NOARGS,
                    c"Closes the app's coroutine; the request ends with GeneratorExit.",
                ),
                ffi::PyMethodDef::zeroed(),
            ]));
            let getter = |name: &'static std::ffi::CStr, get: ffi::getter| ffi::PyGetSetDef {
                name: name.as_ptr(),
                get: Some(get),
                set: None,
                doc: std::ptr::null(),
                closure: std::ptr::null_mut(),
            };
            let getset: &'static mut [ffi::PyGetSetDef] = Box::leak(Box::new([
                getter(c"cr_frame", get_cr_frame),
                getter(c"cr_code", get_cr_code),
                getter(c"cr_await", get_cr_await),
                getter(c"cr_running", get_cr_running),
                // `inspect.getcoroutinestate` reads it once `cr_running` is false
                // (anyio does, for tasks it started). regression (review 316).
                getter(c"cr_suspended", get_cr_suspended),
                getter(c"__name__", get_name),
                getter(c"__qualname__", get_qualname),
                getter(c"_postern_exchange", get_exchange),
                getter(c"_postern_coro", get_coro),
                ffi::PyGetSetDef {
                    name: std::ptr::null(),
                    get: None,
                    set: None,
                    doc: std::ptr::null(),
                    closure: std::ptr::null_mut(),
                },
            ]));
            let slot = |slot, pfunc: *mut std::ffi::c_void| ffi::PyType_Slot { slot, pfunc };
            let slots: &'static mut [ffi::PyType_Slot] = Box::leak(Box::new([
                slot(ffi::Py_am_await, serve_self as *mut _),
                slot(ffi::Py_am_send, serve_am_send as *mut _),
                slot(ffi::Py_tp_iter, serve_self as *mut _),
                slot(ffi::Py_tp_iternext, serve_next as *mut _),
                slot(ffi::Py_tp_dealloc, serve_dealloc as *mut _),
                slot(ffi::Py_tp_traverse, serve_traverse as *mut _),
                slot(ffi::Py_tp_clear, serve_clear as *mut _),
                slot(ffi::Py_tp_finalize, serve_finalize as *mut _),
                slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
                slot(ffi::Py_tp_getset, getset.as_mut_ptr().cast()),
                slot(
                    ffi::Py_tp_doc,
                    c"A request's coroutine: the app's, ended by postern.".as_ptr() as *mut _,
                ),
                ffi::PyType_Slot::default(),
            ]));
            let spec: &'static mut ffi::PyType_Spec = Box::leak(Box::new(ffi::PyType_Spec {
                name: c"postern.serve".as_ptr(),
                basicsize: std::mem::size_of::<ServeObject>() as std::ffi::c_int,
                itemsize: 0,
                flags: (ffi::Py_TPFLAGS_DEFAULT
                    | ffi::Py_TPFLAGS_HAVE_GC
                    | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION)
                    as std::ffi::c_uint,
                slots: slots.as_mut_ptr(),
            }));
            // SAFETY: with the GIL held; the spec and what it points to live forever;
            // the result is a new reference to a type, or NULL with an exception.
            unsafe {
                Ok::<_, PyErr>(
                    Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))?
                        .cast_into::<PyType>()?
                        .unbind(),
                )
            }
        })
        .map(|t| t.bind(py))
}

/// # Safety
/// `o` a `ServeObject`.
unsafe fn me<'a>(o: *mut ffi::PyObject) -> &'a mut ServeObject {
    // SAFETY: the caller's.
    unsafe { &mut *o.cast::<ServeObject>() }
}

/// Ends the request (`raised`: what the app's call raised) and drops the app's
/// coroutine; the wrapper is done.
///
/// # Safety
/// With the GIL held; `o` a `ServeObject` in state RUNNING.
unsafe fn finish(o: *mut ffi::PyObject, raised: Option<PyErr>) -> PyResult<()> {
    // SAFETY: the caller's.
    unsafe {
        let py = Python::assume_attached();
        let s = me(o);
        let r = if s.exchange.is_null() {
            Ok(())
        } else {
            // A reference of its own: the end may run code that drops the wrapper's.
            let ex = Bound::from_borrowed_ptr(py, s.exchange);
            match ex.cast_into::<Exchange>() {
                Ok(ex) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Exchange::task_done(&ex, raised)
                }))
                .unwrap_or_else(|_| {
                    Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "internal error ending a request (a panic; see the log)",
                    ))
                }),
                Err(e) => Err(e.into()),
            }
        };
        let s = me(o);
        s.state = DONE;
        let coro = std::mem::replace(&mut s.coro, std::ptr::null_mut());
        ffi::Py_XDECREF(coro);
        r
    }
}

/// Checks that a step may start now; sets the error if not.
///
/// # Safety
/// With the GIL held; `o` a `ServeObject`.
unsafe fn may_step(o: *mut ffi::PyObject) -> bool {
    // SAFETY: the caller's.
    unsafe {
        match me(o).state {
            RUNNING => {
                ffi::PyErr_SetString(
                    ffi::PyExc_ValueError,
                    c"coroutine already executing".as_ptr(),
                );
                false
            }
            DONE => {
                ffi::PyErr_SetString(
                    ffi::PyExc_RuntimeError,
                    c"cannot reuse already awaited coroutine".as_ptr(),
                );
                false
            }
            _ => true,
        }
    }
}

/// One step with `arg` sent in, as `PyIter_Send` gives it.
///
/// # Safety
/// With the GIL held; `o` a `ServeObject`; `arg` borrowed; `result` writable.
unsafe fn step(
    o: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: the caller's; the app's coroutine is kept alive by a reference of the
    // step's own while it runs (the step may drop the wrapper's).
    unsafe {
        if !may_step(o) {
            return ffi::PySendResult::PYGEN_ERROR;
        }
        let s = me(o);
        if s.state == CREATED && arg != ffi::Py_None() {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"can't send non-None value to a just-started coroutine".as_ptr(),
            );
            return ffi::PySendResult::PYGEN_ERROR;
        }
        s.state = RUNNING;
        // A crash of the loop thread during the step answers this request (a FastCGI
        // front server would send it again to another worker: `fastcgi::crash`).
        if !s.exchange.is_null() {
            if let Ok(ex) = Bound::from_borrowed_ptr(Python::assume_attached(), s.exchange)
                .cast_into::<Exchange>()
            {
                Exchange::serving_here(&ex);
            }
        }
        let coro = ffi::Py_NewRef(s.coro);
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        let sent = ffi::PyIter_Send(coro, arg, &mut out);
        ffi::Py_DECREF(coro);
        crate::server::fastcgi::crash::clear();
        let raised = match sent {
            ffi::PySendResult::PYGEN_NEXT => {
                me(o).state = SUSPENDED;
                *result = out;
                return ffi::PySendResult::PYGEN_NEXT;
            }
            ffi::PySendResult::PYGEN_RETURN => {
                ffi::Py_XDECREF(out);
                None
            }
            ffi::PySendResult::PYGEN_ERROR => Some(PyErr::fetch(Python::assume_attached())),
        };
        ended(o, raised, result)
    }
}

/// The end of the app's coroutine: the request ends, and the wrapper returns `None`
/// (or raises what ending the request raised: an internal error).
///
/// # Safety
/// As [`step`]'s; `o` RUNNING.
unsafe fn ended(
    o: *mut ffi::PyObject,
    raised: Option<PyErr>,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: the caller's.
    unsafe {
        match finish(o, raised) {
            Ok(()) => {
                *result = ffi::Py_NewRef(ffi::Py_None());
                ffi::PySendResult::PYGEN_RETURN
            }
            Err(e) => {
                e.restore(Python::assume_attached());
                ffi::PySendResult::PYGEN_ERROR
            }
        }
    }
}

/// A send result as a method returns it: the value yielded, or NULL with
/// `StopIteration` (or the error).
///
/// # Safety
/// With the GIL held.
unsafe fn as_method_result(sent: ffi::PySendResult, out: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: the caller's; `out` is the new reference `step` gave (NEXT or RETURN).
    unsafe {
        match sent {
            ffi::PySendResult::PYGEN_NEXT => out,
            ffi::PySendResult::PYGEN_RETURN => {
                // The wrapper always returns None.
                ffi::Py_XDECREF(out);
                ffi::PyErr_SetNone(ffi::PyExc_StopIteration);
                std::ptr::null_mut()
            }
            ffi::PySendResult::PYGEN_ERROR => std::ptr::null_mut(),
        }
    }
}

/// `__await__` and `__iter__`: itself.
unsafe extern "C" fn serve_self(o: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `o` valid.
    unsafe { ffi::Py_NewRef(o) }
}

/// What the task's step calls (`PyIter_Send`).
unsafe extern "C" fn serve_am_send(
    o: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls it with the GIL held, `o` a serve object, `result` writable.
    unsafe { step(o, arg, result) }
}

/// `__next__`: `send(None)`.
unsafe extern "C" fn serve_next(o: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: as for `serve_am_send`.
    unsafe {
        let mut out = std::ptr::null_mut();
        let sent = step(o, ffi::Py_None(), &mut out);
        if sent == ffi::PySendResult::PYGEN_RETURN {
            // The end of an iterator: no StopIteration needed for None.
            ffi::Py_XDECREF(out);
            return std::ptr::null_mut();
        }
        as_method_result(sent, out)
    }
}

/// `send(value)`.
unsafe extern "C" fn serve_send_method(
    o: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `serve_am_send`; `arg` borrowed for the call.
    unsafe {
        let mut out = std::ptr::null_mut();
        let sent = step(o, arg, &mut out);
        as_method_result(sent, out)
    }
}

/// `throw(exception)` (or `throw(type[, value[, traceback]])`): into the app's
/// coroutine where it waits (how a task is cancelled).
unsafe extern "C" fn serve_throw(
    o: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held, `o` a serve object, `args` a tuple.
    unsafe {
        let s = me(o);
        match s.state {
            RUNNING => {
                may_step(o);
                return std::ptr::null_mut();
            }
            CREATED | DONE => {
                // Raised where the coroutine starts (or after its end): not the
                // request's; the app's coroutine, never started, is dropped.
                s.state = DONE;
                let coro = std::mem::replace(&mut s.coro, std::ptr::null_mut());
                ffi::Py_XDECREF(coro);
                super::http::set_thrown(args);
                return std::ptr::null_mut();
            }
            _ => {}
        }
        s.state = RUNNING;
        let coro = ffi::Py_NewRef(s.coro);
        let throw = ffi::PyObject_GetAttrString(coro, c"throw".as_ptr());
        let out = if throw.is_null() {
            std::ptr::null_mut()
        } else {
            let out = ffi::PyObject_Call(throw, args, std::ptr::null_mut());
            ffi::Py_DECREF(throw);
            out
        };
        ffi::Py_DECREF(coro);
        if !out.is_null() {
            me(o).state = SUSPENDED;
            return out;
        }
        let py = Python::assume_attached();
        let raised = if ffi::PyErr_ExceptionMatches(ffi::PyExc_StopIteration) != 0 {
            ffi::PyErr_Clear();
            None
        } else {
            Some(PyErr::fetch(py))
        };
        let mut out = std::ptr::null_mut();
        let sent = ended(o, raised, &mut out);
        as_method_result(sent, out)
    }
}

/// `close()`: the app's coroutine is closed, and the request ends with
/// `GeneratorExit` (or with what closing it raised).
unsafe extern "C" fn serve_close(
    o: *mut ffi::PyObject,
    _none: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls it with the GIL held and `o` a serve object.
    unsafe {
        if close(o) {
            ffi::Py_NewRef(ffi::Py_None())
        } else {
            std::ptr::null_mut()
        }
    }
}

/// `close()`'s work; false with an exception set.
///
/// # Safety
/// With the GIL held; `o` a `ServeObject`.
unsafe fn close(o: *mut ffi::PyObject) -> bool {
    // SAFETY: the caller's.
    unsafe {
        let s = me(o);
        match s.state {
            RUNNING => return may_step(o),
            CREATED | DONE => {
                s.state = DONE;
                let coro = std::mem::replace(&mut s.coro, std::ptr::null_mut());
                ffi::Py_XDECREF(coro);
                return true;
            }
            _ => {}
        }
        s.state = RUNNING;
        let py = Python::assume_attached();
        let coro = ffi::Py_NewRef(s.coro);
        let closed = ffi::PyObject_CallMethodNoArgs(coro, pyo3::intern!(py, "close").as_ptr());
        ffi::Py_DECREF(coro);
        let raised = if closed.is_null() {
            PyErr::fetch(py)
        } else {
            ffi::Py_DECREF(closed);
            PyErr::new::<pyo3::exceptions::PyGeneratorExit, _>(())
        };
        match finish(o, Some(raised)) {
            Ok(()) => true,
            Err(e) => {
                e.restore(py);
                false
            }
        }
    }
}

/// A wrapper dropped while suspended (its task garbage-collected unfinished) closes,
/// as a coroutine does.
unsafe extern "C" fn serve_finalize(o: *mut ffi::PyObject) {
    // SAFETY: CPython calls it with the GIL held and `o` a serve object (alive for
    // the call); the exception being handled, if any, is kept.
    unsafe {
        if me(o).state != SUSPENDED {
            return;
        }
        let py = Python::assume_attached();
        let saved = PyErr::take(py);
        if !close(o) {
            ffi::PyErr_WriteUnraisable(o);
        }
        if let Some(e) = saved {
            e.restore(py);
        }
    }
}

unsafe extern "C" fn serve_traverse(
    o: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: CPython calls it with `o` a serve object.
    unsafe {
        let s = me(o);
        for r in [s.coro, s.exchange] {
            if !r.is_null() {
                let v = visit(r, arg);
                if v != 0 {
                    return v;
                }
            }
        }
        0
    }
}

unsafe extern "C" fn serve_clear(o: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: CPython calls it with the GIL held and `o` a serve object; each field is
    // nulled before its reference is released (the release may run code).
    unsafe {
        let s = me(o);
        let coro = std::mem::replace(&mut s.coro, std::ptr::null_mut());
        let exchange = std::mem::replace(&mut s.exchange, std::ptr::null_mut());
        ffi::Py_XDECREF(coro);
        ffi::Py_XDECREF(exchange);
        0
    }
}

unsafe extern "C" fn serve_dealloc(o: *mut ffi::PyObject) {
    // SAFETY: CPython calls it with the GIL held, once, when `o`'s count is 0; the
    // finalizer runs first (and may resurrect it, as for a coroutine); a heap type's
    // instance holds a reference to its type, released last.
    unsafe {
        let tp = ffi::Py_TYPE(o);
        if ffi::PyObject_CallFinalizerFromDealloc(o) < 0 {
            return;
        }
        ffi::PyObject_GC_UnTrack(o.cast());
        serve_clear(o);
        if let Some(free) = (*tp).tp_free {
            free(o.cast());
        }
        ffi::Py_DECREF(tp.cast());
    }
}

/// An attribute of the app's coroutine, or `default` once it is gone.
///
/// # Safety
/// With the GIL held; `o` a `ServeObject`.
unsafe fn of_coro(
    o: *mut ffi::PyObject,
    name: &std::ffi::CStr,
    default: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller's.
    unsafe {
        let coro = me(o).coro;
        if coro.is_null() {
            return ffi::Py_NewRef(default);
        }
        ffi::PyObject_GetAttrString(coro, name.as_ptr())
    }
}

unsafe extern "C" fn get_cr_frame(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls getters with the GIL held and `o` a serve object.
    unsafe { of_coro(o, c"cr_frame", ffi::Py_None()) }
}

unsafe extern "C" fn get_cr_code(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { of_coro(o, c"cr_code", ffi::Py_None()) }
}

unsafe extern "C" fn get_cr_await(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { of_coro(o, c"cr_await", ffi::Py_None()) }
}

unsafe extern "C" fn get_cr_running(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { ffi::PyBool_FromLong((me(o).state == RUNNING).into()) }
}

unsafe extern "C" fn get_cr_suspended(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { ffi::PyBool_FromLong((me(o).state == SUSPENDED).into()) }
}

unsafe extern "C" fn get_name(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { name_or(o, c"__name__") }
}

unsafe extern "C" fn get_qualname(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe { name_or(o, c"__qualname__") }
}

/// The app's coroutine's name, else "serve".
///
/// # Safety
/// With the GIL held; `o` a `ServeObject`.
unsafe fn name_or(o: *mut ffi::PyObject, attr: &std::ffi::CStr) -> *mut ffi::PyObject {
    // SAFETY: the caller's.
    unsafe {
        let coro = me(o).coro;
        if !coro.is_null() {
            let n = ffi::PyObject_GetAttrString(coro, attr.as_ptr());
            if !n.is_null() {
                return n;
            }
            ffi::PyErr_Clear();
        }
        ffi::PyUnicode_FromString(c"serve".as_ptr())
    }
}

unsafe extern "C" fn get_exchange(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe {
        let ex = me(o).exchange;
        ffi::Py_NewRef(if ex.is_null() { ffi::Py_None() } else { ex })
    }
}

unsafe extern "C" fn get_coro(
    o: *mut ffi::PyObject,
    _: *mut std::ffi::c_void,
) -> *mut ffi::PyObject {
    // SAFETY: as for `get_cr_frame`.
    unsafe {
        let c = me(o).coro;
        ffi::Py_NewRef(if c.is_null() { ffi::Py_None() } else { c })
    }
}
