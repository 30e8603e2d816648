//! Builds the environ dict from a request head (PEP 3333, docs/protocols.md §4): CGI keys and
//! values are latin-1 native strings; standard keys are interned once per thread.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};
use pyo3::{ffi, intern};

use super::errors::Errors;
use super::file_wrapper::FileWrapper;
use super::input::Input;
use super::{ListenerInfo, Settings};
use crate::codec::{Head, Protocol};
use crate::logging::RequestId;
use crate::proto::cgi::{self, Defaults, KNOWN};

// Part of CPython's C API (Include/cpython/dictobject.h, 3.8 to 3.14 at least) but not
// of pyo3-ffi, which leaves out names starting with `_`. Not in the limited API; postern
// never builds against it (it embeds the interpreter it links).
extern "C" {
    fn _PyDict_NewPresized(minused: ffi::Py_ssize_t) -> *mut ffi::PyObject;
}

/// Values common enough to share one `str` across requests (a `str` is immutable, so
/// handing the same object to every request is safe); the rest are decoded each time.
const COMMON_VALUES: &[&str] = &[
    "", "GET", "POST", "HEAD", "HTTP/1.1", "HTTP/1.0", "http", "https", "on", "*/*", "/",
];

fn common_value(v: &[u8]) -> Option<usize> {
    Some(match v {
        b"" => 0,
        b"GET" => 1,
        b"POST" => 2,
        b"HEAD" => 3,
        b"HTTP/1.1" => 4,
        b"HTTP/1.0" => 5,
        b"http" => 6,
        b"https" => 7,
        b"on" => 8,
        b"*/*" => 9,
        b"/" => 10,
        _ => return None,
    })
}

/// Per-thread constants for building environs.
pub struct Keys {
    /// One interned `str` per [`KNOWN`] name, by index.
    known: Vec<Py<PyString>>,
    /// One `str` per [`COMMON_VALUES`] entry, by index.
    values: Vec<Py<PyString>>,
    /// The entries every environ of this thread starts with, in a dict sized for a
    /// whole environ: each request's dict is a copy (CPython copies a compact dict's
    /// table in one block), so the constant entries cost no insertion and the CGI
    /// variables that follow fit without the table growing.
    template: Py<PyDict>,
    /// The last value seen for each [`KNOWN`] name and its `str`: a front server sends
    /// most of them unchanged request after request (DOCUMENT_ROOT, SERVER_*, Host,
    /// User-Agent…), and a `str` is immutable, so the same object serves again.
    last: std::cell::RefCell<Vec<Option<Seen>>>,
    /// This thread's `wsgi.errors` when the protocol forwards nothing (uwsgi, SCGI): one
    /// object for every request (its lines go to the log inside the current request's
    /// span), flushed at each request's end by [`Keys::end_request`].
    errors: Py<Errors>,
    /// The names of the last request's variables, and once a second request had the
    /// same ones, its whole environ to copy from: see [`Shape`].
    shape: std::cell::RefCell<Shape>,
    /// This thread's `start_response` of the last request, kept for the next one when
    /// nothing else refers to it (`response::reuse`). Held as `PyAny` (response.rs
    /// casts it back) so that this module does not import `response`, which imports it.
    pub(super) responder: std::cell::RefCell<Option<Py<PyAny>>>,
    /// A forwarding `wsgi.errors` (FastCGI) of an earlier request of this thread that
    /// nothing refers to any more, for the next one (`response::respond`).
    pub(super) spare_errors: std::cell::RefCell<Option<Py<Errors>>>,
    /// The last request's variables list, emptied, for the next one's
    /// ([`cgi::normalise_into`]): one allocation per thread instead of one per request.
    spare_vars: std::cell::RefCell<Vec<cgi::Var<'static>>>,
    /// This thread's request, for a stop that cuts it off (`inflight`).
    pub(super) inflight: std::sync::Arc<super::inflight::Slot>,
}

/// A variables list longer than this is not kept for the next request (a request
/// with thousands of variables must not leave their room allocated).
const SPARE_VARS: usize = 128;

/// `vars` emptied, to be kept beyond the request whose bytes it borrowed.
fn spare_vars(mut vars: Vec<cgi::Var<'_>>) -> Vec<cgi::Var<'static>> {
    if vars.capacity() > SPARE_VARS {
        return Vec::new();
    }
    vars.clear();
    let mut vars = std::mem::ManuallyDrop::new(vars);
    // SAFETY: the list is empty, so it holds no reference of any lifetime, and `Var<'a>`
    // has the same layout whatever `'a`: the allocation is handed over as it is (pointer
    // and capacity of a live `Vec` of that type), and freed once, by the new `Vec`.
    unsafe { Vec::from_raw_parts(vars.as_mut_ptr().cast(), 0, vars.capacity()) }
}

/// A value as it came on the wire, and the `str` made of it.
type Seen = (Vec<u8>, Py<PyString>);

/// A front server sends the same variables in the same order request after request
/// (its params file), and most of their values too. Once two requests in a row had the
/// same names, the environ of the second (template entries + its CGI variables, without
/// its input, errors or id) is kept: the next request with those names copies it in
/// one block and replaces only the values that differ, instead of inserting every
/// variable into a fresh table (~80 instructions each). The copy has the same keys in
/// the same order as a dict built from scratch, so the app sees the same environ.
#[derive(Default)]
struct Shape {
    /// The last request's names: a [`KNOWN`] index per variable, or `UNKNOWN`, the
    /// name's length (2 bytes) and the name.
    names: Vec<u8>,
    /// The current request's names, built here to compare (kept: no allocation per
    /// request).
    next: Vec<u8>,
    /// Built with `names` (and `https`): the dict and the value set for each variable.
    full: Option<(Py<PyDict>, Vec<Py<PyString>>)>,
    /// The bytes each of `full`'s values was decoded from, one after the other, and
    /// where each ends: a variable whose bytes are the same keeps `full`'s value with
    /// one comparison (no `str` looked up, no reference taken and dropped).
    raw: Vec<u8>,
    raw_ends: Vec<u32>,
    https: bool,
}

/// Marks a name outside [`KNOWN`] in [`Shape::names`].
const UNKNOWN: u8 = u8::MAX;

/// Entries a copy of the template can take before its table grows: `_PyDict_NewPresized(56)`
/// gives a 128-slot table (85 usable), of which the template uses 11.
const TEMPLATE_PRESIZE: ffi::Py_ssize_t = 56;

impl Keys {
    pub fn new(py: Python<'_>, settings: &Settings) -> Self {
        let known = KNOWN
            .iter()
            .map(|k| PyString::intern(py, k).unbind())
            .collect();
        let values = COMMON_VALUES
            .iter()
            .map(|v| PyString::intern(py, v).unbind())
            .collect();
        // SAFETY: called with the GIL held; returns a new reference to an empty dict
        // (its table presized), or NULL with an exception set on memory exhaustion.
        let template = unsafe {
            Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(TEMPLATE_PRESIZE))
                .expect("allocating the environ template")
                .cast_into_unchecked::<PyDict>()
        };
        let errors = Py::new(py, Errors::new(None)).expect("allocating wsgi.errors");
        // A request without a body shares this one (nothing in an empty input changes).
        let empty_input =
            Py::new(py, Input::new(super::Body::Empty)).expect("allocating wsgi.input");
        let fill = || -> PyResult<()> {
            template.set_item(intern!(py, "wsgi.version"), PyTuple::new(py, [1, 0])?)?;
            template.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "http"))?;
            // Replaced in place by a request with a body, or with FastCGI's forwarding.
            template.set_item(intern!(py, "wsgi.input"), &empty_input)?;
            template.set_item(intern!(py, "wsgi.errors"), &errors)?;
            template.set_item(
                intern!(py, "wsgi.multithread"),
                PyBool::new(py, settings.threads > 1),
            )?;
            template.set_item(
                intern!(py, "wsgi.multiprocess"),
                PyBool::new(py, settings.multiprocess),
            )?;
            template.set_item(intern!(py, "wsgi.run_once"), PyBool::new(py, false))?;
            template.set_item(intern!(py, "wsgi.input_terminated"), PyBool::new(py, true))?;
            template.set_item(
                intern!(py, "wsgi.file_wrapper"),
                py.get_type::<FileWrapper>(),
            )?;
            // Always set, so one key works whether or not the front server sent an id
            // (its `HTTP_X_REQUEST_ID`, when sent, is in the environ as it came).
            template.set_item(intern!(py, "postern.request_id"), py.None())?;
            Ok(())
        };
        fill().expect("filling the environ template");
        Keys {
            known,
            values,
            template: template.unbind(),
            last: std::cell::RefCell::new((0..KNOWN.len()).map(|_| None).collect()),
            errors,
            shape: std::cell::RefCell::new(Shape::default()),
            responder: std::cell::RefCell::new(None),
            spare_errors: std::cell::RefCell::new(None),
            spare_vars: std::cell::RefCell::new(Vec::new()),
            inflight: super::inflight::Slot::new(),
        }
    }

    /// Ends a request on this thread: what the app wrote to the shared `wsgi.errors`
    /// without a final newline is logged now, inside the request's span.
    pub fn end_request(&self, py: Python<'_>) {
        if let Ok(mut errors) = self.errors.bind(py).try_borrow_mut() {
            errors.flush();
        }
    }

    /// A `str` for the CGI value `v` of the variable `known` (latin-1): shared when it
    /// is a common value or the one this name had last time.
    fn value<'py>(&self, py: Python<'py>, known: Option<u8>, v: &[u8]) -> Bound<'py, PyString> {
        if let Some(i) = common_value(v) {
            return self.values[i].bind(py).clone();
        }
        let Some(k) = known else {
            return latin1(py, v);
        };
        let mut last = self.last.borrow_mut();
        let slot = &mut last[usize::from(k)];
        match slot {
            Some((bytes, s)) if bytes.as_slice() == v => s.bind(py).clone(),
            Some((bytes, s)) => {
                let fresh = latin1(py, v);
                bytes.clear();
                bytes.extend_from_slice(v);
                *s = fresh.clone().unbind();
                fresh
            }
            None => {
                let fresh = latin1(py, v);
                *slot = Some((v.to_vec(), fresh.clone().unbind()));
                fresh
            }
        }
    }
}

/// Decodes bytes as latin-1 (every byte is one code point ≤ U+00FF): PEP 3333's
/// "bytes-as-str" native strings.
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: PyUnicode_DecodeLatin1 reads exactly `len` bytes from `ptr` and returns a
    // new reference, or NULL with an exception set (only on memory exhaustion), which
    // `from_owned_ptr` turns into a panic (never a NULL object): the request's
    // catch_unwind answers it as an internal error.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(
            b.as_ptr().cast(),
            b.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        Bound::from_owned_ptr(py, ptr).cast_into_unchecked()
    }
}

/// A new dict with the entries of `d` (CPython copies a compact dict's table in one block).
fn copy_dict<'py>(d: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: `d` is a dict; PyDict_Copy returns a new reference to a new dict, or NULL
    // with an exception set.
    unsafe {
        Ok(
            Bound::from_owned_ptr_or_err(d.py(), ffi::PyDict_Copy(d.as_ptr()))?
                .cast_into_unchecked(),
        )
    }
}

/// What the caller needs to know about the request besides the dict.
pub struct Built<'py> {
    pub environ: Bound<'py, PyDict>,
    pub method_missing: bool,
    pub is_head: bool,
}

/// Builds the environ for one request.
#[allow(clippy::too_many_arguments)]
pub fn build<'py>(
    py: Python<'py>,
    keys: &Keys,
    head: &Head,
    listener: &ListenerInfo,
    settings: &Settings,
    request_id: &RequestId,
    input: Option<Bound<'py, Input>>,
    errors: Option<Bound<'py, Errors>>,
) -> PyResult<Built<'py>> {
    let spare = std::mem::take(&mut *keys.spare_vars.borrow_mut());
    let cgi = cgi::normalise_into(
        head.pairs(),
        Defaults {
            server_name: &listener.server_name,
            server_port: &listener.server_port,
            modifier30: head.modifier30,
            script_name_is_path: listener.protocol != Protocol::Uwsgi,
            mounts: &settings.mounts,
        },
        spare,
    )
    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let https = cgi.scheme == "https";
    let mut shape = keys.shape.borrow_mut();
    let mut names = std::mem::take(&mut shape.next);
    names.clear();
    for var in &cgi.vars {
        match var.known {
            Some(k) => names.push(k),
            None => {
                // A name longer than 65535 bytes is never the same shape (no uwsgi head
                // holds one; a FastCGI name may, and is then inserted as usual).
                let n = u16::try_from(var.key.len()).unwrap_or(u16::MAX);
                names.push(UNKNOWN);
                names.extend_from_slice(&n.to_le_bytes());
                names.extend_from_slice(var.key);
            }
        }
    }
    let key = |var: &cgi::Var<'_>| match var.known {
        Some(k) => keys.known[usize::from(k)].bind(py).clone(),
        None => latin1(py, var.key),
    };
    let same = shape.names == names && shape.https == https;
    let env = match (&shape.full, same) {
        (Some((full, values)), true) => {
            let env = copy_dict(full.bind(py))?;
            let mut start = 0;
            for ((var, old), &end) in cgi.vars.iter().zip(values).zip(&shape.raw_ends) {
                let was = shape.raw.get(start..end as usize);
                start = end as usize;
                if was.is_some_and(|was| cgi::same(was, &var.value)) {
                    continue;
                }
                let value = keys.value(py, var.known, &var.value);
                if value.as_ptr() != old.as_ptr() {
                    env.set_item(key(var), value)?;
                }
            }
            env
        }
        _ => {
            let env = copy_dict(keys.template.bind(py))?;
            if https {
                env.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
            }
            let mut values = Vec::with_capacity(if same { cgi.vars.len() } else { 0 });
            for var in &cgi.vars {
                let value = keys.value(py, var.known, &var.value);
                env.set_item(key(var), &value)?;
                if same {
                    values.push(value.unbind());
                }
            }
            // The second request in a row with these names: keep its environ (before
            // the per-request entries below replace the template's).
            shape.full = if same {
                Some((copy_dict(&env)?.unbind(), values))
            } else {
                None
            };
            let (mut raw, mut raw_ends) = (
                std::mem::take(&mut shape.raw),
                std::mem::take(&mut shape.raw_ends),
            );
            raw.clear();
            raw_ends.clear();
            if same {
                for var in &cgi.vars {
                    raw.extend_from_slice(&var.value);
                    raw_ends.push(u32::try_from(raw.len()).unwrap_or(u32::MAX));
                }
            }
            (shape.raw, shape.raw_ends) = (raw, raw_ends);
            shape.https = https;
            env
        }
    };
    shape.next = if same {
        names
    } else {
        std::mem::replace(&mut shape.names, names)
    };
    drop(shape);
    let (method_missing, is_head) = (cgi.method_missing, cgi.is_head);
    *keys.spare_vars.borrow_mut() = spare_vars(cgi.vars);
    if let Some(input) = input {
        env.set_item(intern!(py, "wsgi.input"), input)?;
    }
    if let Some(errors) = errors {
        env.set_item(intern!(py, "wsgi.errors"), errors)?;
    }
    env.set_item(
        intern!(py, "postern.request_id"),
        latin1(py, request_id.as_bytes()),
    )?;
    Ok(Built {
        environ: env,
        method_missing,
        is_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn var(value: &[u8]) -> cgi::Var<'_> {
        cgi::Var {
            key: b"HTTP_X",
            known: None,
            value: Cow::Borrowed(value),
        }
    }

    #[test]
    fn a_request_s_variables_list_is_kept_empty_with_its_room() {
        let bytes = b"value".to_vec();
        let mut vars = Vec::with_capacity(24);
        vars.extend((0..20).map(|_| var(&bytes)));
        let kept = spare_vars(vars);
        assert!(kept.is_empty());
        assert!(kept.capacity() >= 24);
    }

    #[test]
    fn a_long_variables_list_is_not_kept() {
        let bytes = b"value".to_vec();
        let vars: Vec<_> = (0..SPARE_VARS + 1).map(|_| var(&bytes)).collect();
        assert_eq!(spare_vars(vars).capacity(), 0);
    }
}
