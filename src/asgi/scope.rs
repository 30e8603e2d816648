//! The HTTP connection scope dict of one request (docs/protocols.md §7), from the
//! fields [`proto::asgi::scope`] derives from the CGI variables (the same normalisation
//! as the WSGI environ: mounts, modifier1 30, the scheme, repeated headers). Built with
//! the C API into a presized dict; constant keys and values are interned once per
//! process, header names of the known CGI names made once.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use pyo3::{ffi, intern};

use crate::codec::{Head, Protocol};
use crate::proto::asgi::{self as proto_asgi, header_name, Scope};
use crate::proto::cgi::{Defaults, KNOWN};
use crate::wsgi::environ::latin1;
use crate::wsgi::ListenerInfo;

// Part of CPython's C API (Include/cpython/dictobject.h, 3.8 to 3.14 at least) but not
// of pyo3-ffi, which leaves out names starting with `_` (as in wsgi::environ).
extern "C" {
    fn _PyDict_NewPresized(minused: ffi::Py_ssize_t) -> *mut ffi::PyObject;
}

/// Keys a scope has at most (type, asgi, http_version, method, scheme, path, raw_path,
/// query_string, root_path, headers, client, server, state, extensions): the dict's
/// table is sized once for them.
const SCOPE_KEYS: ffi::Py_ssize_t = 14;

/// A request the scope cannot describe: answered with `status` and an empty body, not
/// served; `reason` is the sentence for the warn line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reason} (answered {status})")]
pub struct ScopeRefusal {
    pub status: u16,
    pub reason: String,
}

/// Builds the scope dict of one HTTP request. `mounts` are `--mount`'s prefixes; `state`
/// is the lifespan state, of which the scope gets a shallow copy (a key an app adds
/// during one request is not seen by the next; the objects inside are shared, as the
/// ASGI lifespan spec means them to be).
///
/// Refused (400): a malformed or conflicting `CONTENT_LENGTH`, or no `REQUEST_METHOD`
/// (the front server's params file is missing), as on the WSGI path.
pub fn build<'py>(
    py: Python<'py>,
    head: &Head,
    listener: &ListenerInfo,
    mounts: &[Vec<u8>],
    state: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyDict>, ScopeRefusal> {
    build_with_method(py, head, listener, mounts, state).map(|(d, _)| d)
}

/// [`build`], and whether the request is a `HEAD` (the scope's method).
pub fn build_with_method<'py>(
    py: Python<'py>,
    head: &Head,
    listener: &ListenerInfo,
    mounts: &[Vec<u8>],
    state: Option<&Bound<'py, PyDict>>,
) -> Result<(Bound<'py, PyDict>, bool), ScopeRefusal> {
    let failed = |e: PyErr| ScopeRefusal {
        // Only a failed allocation gets here.
        status: 500,
        reason: format!("cannot build the ASGI scope: {e}"),
    };
    if let Some(again) = repeat(py, head, listener, mounts, state) {
        let (d, flags) = again.map_err(failed)?;
        if flags.lossy_path {
            tracing::debug!(
                "the path is not UTF-8: U+FFFD in scope[\"path\"], raw_path has the bytes"
            );
        }
        if flags.odd_protocol {
            tracing::debug!("SERVER_PROTOCOL is not HTTP/1.0, 1.1, 2 or 3: http_version \"1.1\"");
        }
        return Ok((d, flags.is_head));
    }
    // `Head::pairs`, cloneable (the SCGI rule may look at the pairs twice).
    let at = |r: &std::ops::Range<u32>| &head.buf[r.start as usize..r.end as usize];
    let pairs = head.vars.iter().map(move |(k, v)| (at(k), at(v)));
    let scope = proto_asgi::scope(
        pairs,
        Defaults {
            server_name: &listener.server_name,
            server_port: &listener.server_port,
            modifier30: head.modifier30,
            script_name_is_path: listener.protocol != Protocol::Uwsgi,
            mounts,
        },
        // SCGI always sends CONTENT_LENGTH (docs/protocols.md §3).
        listener.protocol == Protocol::Scgi,
    )
    .map_err(|e| ScopeRefusal {
        status: 400,
        reason: format!("the request's variables are malformed: {e}"),
    })?;
    if scope.method_missing {
        let params = listener.protocol.params_file();
        return Err(ScopeRefusal {
            status: 400,
            reason: format!(
                "request has no REQUEST_METHOD; include {params} in the nginx location"
            ),
        });
    }
    if scope.lossy_path {
        tracing::debug!("the path is not UTF-8: U+FFFD in scope[\"path\"], raw_path has the bytes");
    }
    if scope.odd_protocol {
        tracing::debug!("SERVER_PROTOCOL is not HTTP/1.0, 1.1, 2 or 3: http_version \"1.1\"");
    }
    let d = fill(py, &scope, state).map_err(failed)?;
    let flags = Flags {
        is_head: scope.is_head,
        lossy_path: scope.lossy_path,
        odd_protocol: scope.odd_protocol,
    };
    remember(&d, head, listener, mounts, flags);
    Ok((d, scope.is_head))
}

/// What [`build_with_method`] says beside the dict, kept for a repeat.
#[derive(Clone, Copy)]
struct Flags {
    is_head: bool,
    lossy_path: bool,
    odd_protocol: bool,
}

/// What the previous request's scope ([`LastScope`]) was built from: its variables as
/// the codec parsed them, and what else the scope depends on. Behind a front server the
/// requests of one client and route come with the same variables but `REMOTE_PORT`
/// (a new connection each): such a request gets the previous scope again
/// ([`repeat`]), with its own port, without normalising its variables again.
struct HeadKey {
    buf: Vec<u8>,
    vars: Vec<(std::ops::Range<u32>, std::ops::Range<u32>)>,
    /// Where the one `REMOTE_PORT` value sits in `buf` (`None`: there is none).
    port: Option<std::ops::Range<usize>>,
    modifier30: bool,
    protocol: Protocol,
    server_name: std::sync::Arc<[u8]>,
    server_port: std::sync::Arc<[u8]>,
    /// The `--mount` prefixes.
    mounts: Vec<Vec<u8>>,
    flags: Flags,
    /// The header pairs, in a list never handed out (each scope gets a copy).
    headers: Py<pyo3::types::PyList>,
}

/// Keeps what `d` (just built, and kept as [`LastScope`]) was built from; on any
/// doubt (two `REMOTE_PORT`s, a failure) nothing, and the next request is built in full.
fn remember(
    d: &Bound<'_, PyDict>,
    head: &Head,
    listener: &ListenerInfo,
    mounts: &[Vec<u8>],
    flags: Flags,
) {
    let py = d.py();
    LAST_SCOPE.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return;
        };
        let Some(last) = last.as_mut() else {
            return;
        };
        // Its buffers reused: no allocation per request once they are large enough.
        let (mut buf, mut vars, mut kept_mounts) = match last.head.take() {
            Some(k) => (k.buf, k.vars, k.mounts),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        if kept_mounts != mounts {
            kept_mounts = mounts.to_vec();
        }
        let mut ports = head
            .vars
            .iter()
            .filter(|(k, _)| &head.buf[k.start as usize..k.end as usize] == b"REMOTE_PORT");
        let port = match (ports.next(), ports.next()) {
            (None, _) => None,
            (Some((_, v)), None) => Some(v.start as usize..v.end as usize),
            (Some(_), Some(_)) => return,
        };
        let headers = match d.get_item(intern!(py, "headers")) {
            Ok(Some(list)) => match list.cast_into::<pyo3::types::PyList>() {
                Ok(list) => list.get_slice(0, list.len()),
                Err(_) => return,
            },
            _ => return,
        };
        buf.clear();
        buf.extend_from_slice(&head.buf);
        vars.clear();
        vars.extend_from_slice(&head.vars);
        last.head = Some(HeadKey {
            buf,
            vars,
            port,
            modifier30: head.modifier30,
            protocol: listener.protocol,
            server_name: listener.server_name.clone(),
            server_port: listener.server_port.clone(),
            mounts: kept_mounts,
            flags,
            headers: headers.unbind(),
        });
    });
}

/// Where a head's variables sit in its buffer.
type VarRanges = [(std::ops::Range<u32>, std::ops::Range<u32>)];

// Four `u32`s and nothing else: the ranges have no padding, so equal ranges are equal
// bytes (one `memcmp` instead of four comparisons per variable).
const _: () = assert!(std::mem::size_of::<(std::ops::Range<u32>, std::ops::Range<u32>)>() == 16);

/// The bytes of `vars`, to compare two lists of ranges at once.
fn var_bytes(vars: &VarRanges) -> &[u8] {
    // SAFETY: the elements are four `u32`s with no padding (asserted above), so every
    // byte of the slice is initialised; the length is the slice's size in bytes, and
    // `u8` has no alignment requirement.
    unsafe { std::slice::from_raw_parts(vars.as_ptr().cast::<u8>(), std::mem::size_of_val(vars)) }
}

/// The scope of a request whose variables are the previous request's ([`HeadKey`]),
/// `REMOTE_PORT` aside: the previous scope's copy with its own port and new
/// per-request values, as [`LastScope::refill`] would make it. `None`: not a repeat.
fn repeat<'py>(
    py: Python<'py>,
    head: &Head,
    listener: &ListenerInfo,
    mounts: &[Vec<u8>],
    state: Option<&Bound<'py, PyDict>>,
) -> Option<PyResult<(Bound<'py, PyDict>, Flags)>> {
    LAST_SCOPE.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        let last = last.as_mut()?;
        let key = last.head.as_ref()?;
        if last.with_state != state.is_some()
            || key.buf.len() != head.buf.len()
            || key.modifier30 != head.modifier30
            || key.protocol != listener.protocol
            || key.mounts != mounts
            || var_bytes(&key.vars) != var_bytes(&head.vars)
            || *key.server_name != *listener.server_name
            || *key.server_port != *listener.server_port
        {
            return None;
        }
        let buf = &head.buf[..];
        let port = match &key.port {
            Some(at) => {
                // The same bytes around it, and a port (digits only, so the variables
                // split the same way whatever the protocol).
                let value = &buf[at.clone()];
                if buf[..at.start] != key.buf[..at.start]
                    || buf[at.end..] != key.buf[at.end..]
                    || !value.iter().all(u8::is_ascii_digit)
                {
                    return None;
                }
                proto_asgi::parse_port(value).unwrap_or(0)
            }
            None if buf != &key.buf[..] => return None,
            None => 0,
        };
        let flags = key.flags;
        #[cfg(test)]
        REPEATS.with(|n| n.set(n.get() + 1));
        Some(last.again(py, port, state).map(|d| (d, flags)))
    })
}

/// The dict for `s`: a copy of this thread's previous scope with what differs replaced
/// ([`LastScope`]), or built key by key when there is none yet (or it cannot be borrowed).
fn fill<'py>(
    py: Python<'py>,
    s: &Scope<'_>,
    state: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    LAST_SCOPE.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => match last.as_mut() {
            Some(l) if l.with_state == state.is_some() => l.refill(py, s, state),
            _ => {
                let d = fresh(py, s, state)?;
                *last = Some(LastScope::keep(&d, s, state.is_some())?);
                Ok(d)
            }
        },
        // Only if building a scope ever ran inside another on this thread.
        Err(_) => fresh(py, s, state),
    })
}

/// Keys whose values are new for every request (an app may change what it is given):
/// the `asgi` and `extensions` dicts, the headers list and the state copy.
const PER_REQUEST: [&str; 4] = ["asgi", "headers", "state", "extensions"];

/// The scope's immutable values (`str`, `bytes`, tuples, ints) of the previous request
/// on this thread, in a private dict that is never handed out, with what they were made
/// from. Most of them repeat request after request behind one front server (the method,
/// the path, the server, the scheme…): a request copies the dict (CPython copies a
/// compact table in one block) and replaces only the values that differ, and the four
/// [`PER_REQUEST`] ones, instead of inserting fourteen keys.
struct LastScope {
    dict: Py<PyDict>,
    with_state: bool,
    http_version: &'static str,
    method: Vec<u8>,
    scheme: &'static str,
    path: String,
    raw_path: Option<Vec<u8>>,
    query_string: Vec<u8>,
    root_path: String,
    client: Option<(Vec<u8>, u16)>,
    /// The last client address and its `str` (see [`LastScope::client_value`]).
    client_addr: Option<(Vec<u8>, Py<PyString>)>,
    server: (Vec<u8>, Option<u16>),
    /// What it was built from, for [`repeat`].
    head: Option<HeadKey>,
}

thread_local! {
    static LAST_SCOPE: std::cell::RefCell<Option<LastScope>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Scopes [`repeat`] gave on this thread (the tests check it is taken).
    static REPEATS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl LastScope {
    /// Keeps `d` (just built by [`fresh`]) as the next requests' starting point.
    fn keep(d: &Bound<'_, PyDict>, s: &Scope<'_>, with_state: bool) -> PyResult<LastScope> {
        let py = d.py();
        let dict = copy_dict(d)?;
        // The private copy holds no object of this request's app that it could change.
        for k in PER_REQUEST {
            if dict.contains(k)? {
                dict.set_item(k, py.None())?;
            }
        }
        Ok(LastScope {
            dict: dict.unbind(),
            with_state,
            http_version: s.http_version,
            method: s.method.to_vec(),
            scheme: s.scheme,
            path: s.path.to_string(),
            raw_path: s.raw_path.map(<[u8]>::to_vec),
            query_string: s.query_string.to_vec(),
            root_path: s.root_path.to_string(),
            client: s.client.map(|(a, p)| (a.to_vec(), p)),
            client_addr: None,
            server: (s.server.0.to_vec(), s.server.1),
            head: None,
        })
    }

    /// The previous scope again, with `port` as the client's and new per-request
    /// values ([`repeat`]).
    fn again<'py>(
        &mut self,
        py: Python<'py>,
        port: u16,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = copy_dict(self.dict.bind(py))?;
        // The kept dict's client has the port in `self.client` (see `refill`).
        if let Some((addr, kept)) = &self.client {
            if *kept != port {
                let text = match &self.client_addr {
                    Some((bytes, text)) if bytes == addr => text.bind(py).clone(),
                    _ => latin1(py, addr),
                };
                let value =
                    PyTuple::new(py, [text.into_any(), port.into_pyobject(py)?.into_any()])?;
                d.set_item(intern!(py, "client"), value)?;
            }
        }
        d.set_item(intern!(py, "asgi"), asgi(py)?)?;
        let headers = self.head.as_ref().map(|k| k.headers.bind(py));
        if let Some(h) = headers {
            d.set_item(intern!(py, "headers"), h.get_slice(0, h.len()))?;
        }
        if let Some(state) = state {
            d.set_item(intern!(py, "state"), state.copy()?)?;
        }
        d.set_item(intern!(py, "extensions"), extensions(py)?)?;
        Ok(d)
    }

    /// The scope for `s`, from the previous one.
    fn refill<'py>(
        &mut self,
        py: Python<'py>,
        s: &Scope<'_>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // Its own reference: `self` is borrowed mutably below.
        let kept = self.dict.bind(py).clone();
        let d = copy_dict(&kept)?;
        // A value that differs from the previous request's: in this scope and in the
        // kept one (the next request likely repeats it).
        let set = |key: &Bound<'py, PyString>, value: Bound<'py, PyAny>| -> PyResult<()> {
            d.set_item(key, &value)?;
            kept.set_item(key, value)
        };
        if self.http_version != s.http_version {
            set(intern!(py, "http_version"), http_version(py, s).into_any())?;
            self.http_version = s.http_version;
        }
        if self.method != s.method {
            set(intern!(py, "method"), method(py, s.method).into_any())?;
            put(&mut self.method, s.method);
        }
        if self.scheme != s.scheme {
            set(intern!(py, "scheme"), scheme(py, s).into_any())?;
            self.scheme = s.scheme;
        }
        if self.path != s.path {
            set(intern!(py, "path"), PyString::new(py, &s.path).into_any())?;
            self.path.clear();
            self.path.push_str(&s.path);
        }
        if self.raw_path.as_deref() != s.raw_path {
            set(intern!(py, "raw_path"), raw_path(py, s))?;
            match (&mut self.raw_path, s.raw_path) {
                (Some(kept), Some(raw)) => put(kept, raw),
                (kept, raw) => *kept = raw.map(<[u8]>::to_vec),
            }
        }
        if *self.query_string != *s.query_string {
            set(
                intern!(py, "query_string"),
                PyBytes::new(py, &s.query_string).into_any(),
            )?;
            put(&mut self.query_string, &s.query_string);
        }
        if self.root_path != s.root_path {
            set(intern!(py, "root_path"), root_path(py, s).into_any())?;
            self.root_path.clear();
            self.root_path.push_str(&s.root_path);
        }
        if self.client.as_ref().map(|(a, p)| (a.as_slice(), *p)) != s.client {
            let value = self.client_value(py, s)?;
            // Behind nginx the port changes with every connection, the address seldom:
            // only a new address is kept (the kept port would differ next time anyway).
            if self.client.as_ref().map(|(a, _)| a.as_slice()) != s.client.map(|(a, _)| a) {
                set(intern!(py, "client"), value)?;
                self.client = s.client.map(|(a, p)| (a.to_vec(), p));
            } else {
                d.set_item(intern!(py, "client"), value)?;
            }
        }
        if (self.server.0.as_slice(), self.server.1) != s.server {
            set(intern!(py, "server"), server(py, s)?)?;
            self.server = (s.server.0.to_vec(), s.server.1);
        }
        d.set_item(intern!(py, "asgi"), asgi(py)?)?;
        d.set_item(intern!(py, "headers"), headers(py, s)?)?;
        if let Some(state) = state {
            d.set_item(intern!(py, "state"), state.copy()?)?;
        }
        d.set_item(intern!(py, "extensions"), extensions(py)?)?;
        Ok(d)
    }

    /// `client` for `s`, its address `str` shared while it repeats.
    fn client_value<'py>(&mut self, py: Python<'py>, s: &Scope<'_>) -> PyResult<Bound<'py, PyAny>> {
        let Some((addr, port)) = s.client else {
            return Ok(py.None().into_bound(py));
        };
        let addr = match &self.client_addr {
            Some((bytes, text)) if bytes.as_slice() == addr => text.bind(py).clone(),
            _ => {
                let text = latin1(py, addr);
                self.client_addr = Some((addr.to_vec(), text.clone().unbind()));
                text
            }
        };
        Ok(PyTuple::new(py, [addr.into_any(), port.into_pyobject(py)?.into_any()])?.into_any())
    }
}

/// `kept = value`, in the buffer `kept` has (a value that changes request after request,
/// as an API's path or query string does, costs no allocation and free each time).
fn put(kept: &mut Vec<u8>, value: &[u8]) {
    kept.clear();
    kept.extend_from_slice(value);
}

/// A new dict with the entries of `d` (CPython copies a compact dict's table in one block;
/// the request's messages are copies too, `http.rs`).
pub(super) fn copy_dict<'py>(d: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: `d` is a dict; PyDict_Copy returns a new reference to a new dict, or NULL
    // with an exception set.
    unsafe {
        Ok(
            Bound::from_owned_ptr_or_err(d.py(), ffi::PyDict_Copy(d.as_ptr()))?
                .cast_into_unchecked(),
        )
    }
}

/// The scope dict built key by key, in the scope's key order.
fn fresh<'py>(
    py: Python<'py>,
    s: &Scope<'_>,
    state: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: called with the GIL held; returns a new reference to an empty dict (its
    // table presized), or NULL with an exception set on memory exhaustion.
    let d = unsafe {
        Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(SCOPE_KEYS))?
            .cast_into_unchecked::<PyDict>()
    };
    d.set_item(intern!(py, "type"), intern!(py, "http"))?;
    d.set_item(intern!(py, "asgi"), asgi(py)?)?;
    d.set_item(intern!(py, "http_version"), http_version(py, s))?;
    d.set_item(intern!(py, "method"), method(py, s.method))?;
    d.set_item(intern!(py, "scheme"), scheme(py, s))?;
    d.set_item(intern!(py, "path"), PyString::new(py, &s.path))?;
    d.set_item(intern!(py, "raw_path"), raw_path(py, s))?;
    d.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, &s.query_string),
    )?;
    d.set_item(intern!(py, "root_path"), root_path(py, s))?;
    d.set_item(intern!(py, "headers"), headers(py, s)?)?;
    d.set_item(intern!(py, "client"), client(py, s)?)?;
    d.set_item(intern!(py, "server"), server(py, s)?)?;
    if let Some(state) = state {
        d.set_item(intern!(py, "state"), state.copy()?)?;
    }
    d.set_item(intern!(py, "extensions"), extensions(py)?)?;
    Ok(d)
}

/// `asgi`: a new dict each request (an app may change what it is given), copied from
/// one made once (a copy costs less than two insertions).
fn asgi(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    static ASGI: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let template = ASGI.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let asgi = PyDict::new(py);
        asgi.set_item(
            intern!(py, "version"),
            intern!(py, proto_asgi::ASGI_VERSION),
        )?;
        asgi.set_item(
            intern!(py, "spec_version"),
            intern!(py, proto_asgi::SPEC_VERSION),
        )?;
        Ok(asgi.unbind())
    })?;
    copy_dict(template.bind(py))
}

/// `extensions`: what the send path supports beyond the base spec (a new dict each
/// request, as for `asgi`).
fn extensions(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
    Ok(extensions)
}

fn http_version<'py>(py: Python<'py>, s: &Scope<'_>) -> Bound<'py, PyString> {
    match s.http_version {
        "1.0" => intern!(py, "1.0"),
        "2" => intern!(py, "2"),
        "3" => intern!(py, "3"),
        _ => intern!(py, "1.1"),
    }
    .clone()
}

fn scheme<'py>(py: Python<'py>, s: &Scope<'_>) -> Bound<'py, PyString> {
    match s.scheme {
        "https" => intern!(py, "https"),
        _ => intern!(py, "http"),
    }
    .clone()
}

fn raw_path<'py>(py: Python<'py>, s: &Scope<'_>) -> Bound<'py, PyAny> {
    match s.raw_path {
        Some(raw) => PyBytes::new(py, raw).into_any(),
        None => py.None().into_bound(py),
    }
}

fn root_path<'py>(py: Python<'py>, s: &Scope<'_>) -> Bound<'py, PyString> {
    if s.root_path.is_empty() {
        intern!(py, "").clone()
    } else {
        PyString::new(py, &s.root_path)
    }
}

fn client<'py>(py: Python<'py>, s: &Scope<'_>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match s.client {
        Some((addr, port)) => PyTuple::new(
            py,
            [
                latin1(py, addr).into_any(),
                port.into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any(),
        None => py.None().into_bound(py),
    })
}

fn server<'py>(py: Python<'py>, s: &Scope<'_>) -> PyResult<Bound<'py, PyAny>> {
    let (name, port) = s.server;
    let port = match port {
        Some(p) => p.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    };
    Ok(PyTuple::new(py, [latin1(py, name).into_any(), port])?.into_any())
}

/// `method`: the common ones shared, others decoded as latin-1 (a method is an ASCII
/// token; latin-1 never fails on the odd byte).
fn method<'py>(py: Python<'py>, m: &[u8]) -> Bound<'py, PyString> {
    let s = match m {
        b"GET" => intern!(py, "GET"),
        b"POST" => intern!(py, "POST"),
        b"HEAD" => intern!(py, "HEAD"),
        b"PUT" => intern!(py, "PUT"),
        b"DELETE" => intern!(py, "DELETE"),
        b"PATCH" => intern!(py, "PATCH"),
        b"OPTIONS" => intern!(py, "OPTIONS"),
        _ => return latin1(py, m),
    };
    s.clone()
}

/// The header name (`bytes`) of each [`KNOWN`] name that is a header, by index; made
/// once per process (bytes are immutable: every request shares them).
static KNOWN_NAMES: PyOnceLock<Vec<Option<Py<PyBytes>>>> = PyOnceLock::new();

/// Per [`KNOWN`] index: the last value's bytes and its `(name, value)` pair.
type PairCache = Vec<Option<(Vec<u8>, Py<PyTuple>)>>;

thread_local! {
    /// The last `(name, value)` pair of each [`KNOWN`] header on this thread, by index,
    /// with the value's bytes: a front server sends most of them unchanged request after
    /// request (Host, User-Agent, Accept…), and a tuple of bytes is immutable, so the
    /// same pair serves again (no bytes or tuple to make). The list is new each time.
    static LAST_PAIRS: std::cell::RefCell<PairCache> =
        const { std::cell::RefCell::new(Vec::new()) };
}

const UPGRADE: &[u8] = b"HTTP_UPGRADE";

/// A WebSocket handshake was said in the log (once per worker).
static WEBSOCKET_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A request carries `Upgrade: <value>`: the first one that asks for a WebSocket gets
/// one line (in its span) saying that postern does not serve WebSocket.
fn websocket_asked(value: &[u8]) {
    use std::sync::atomic::Ordering;
    let websocket = value
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if websocket && !WEBSOCKET_SAID.swap(true, Ordering::Relaxed) {
        tracing::info!("a request asks for a WebSocket (Upgrade: websocket): postern does not serve WebSocket (ASGI has no websocket scope here, and nginx passes no Upgrade over uwsgi, FastCGI or SCGI unless told to), so it reaches the app as a plain HTTP request (a FastAPI or Starlette @app.websocket route answers 404); serve WebSocket routes from a server that speaks it (see the README's ASGI section). Said once per worker");
    }
}

/// Headers a request has at most to be listed without a heap allocation.
const FEW_HEADERS: usize = 32;

/// `headers`: a list of `(name, value)` tuples of bytes, sized once.
fn headers<'py>(py: Python<'py>, s: &Scope<'_>) -> PyResult<Bound<'py, PyAny>> {
    LAST_PAIRS.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => {
            if last.is_empty() {
                last.resize_with(KNOWN.len(), || None);
            }
            headers_with(py, s, Some(&mut last))
        }
        // Only if building a scope ever ran inside another on this thread.
        Err(_) => headers_with(py, s, None),
    })
}

fn headers_with<'py>(
    py: Python<'py>,
    s: &Scope<'_>,
    mut last: Option<&mut PairCache>,
) -> PyResult<Bound<'py, PyAny>> {
    let known = KNOWN_NAMES.get_or_init(py, || {
        KNOWN
            .iter()
            .map(|k| {
                let k = k.as_bytes();
                let is_header = k.starts_with(b"HTTP_") || k.starts_with(b"CONTENT_");
                is_header.then(|| PyBytes::new(py, &header_name(k).collect::<Vec<u8>>()).unbind())
            })
            .collect()
    });
    // One pass over the variables (counting them first was a second one), into an
    // array on the stack (a request with more headers goes on in a Vec), left
    // uninitialised: writing or moving the whole array cost more than the Vec did.
    let mut few =
        [const { std::mem::MaybeUninit::<proto_asgi::Header<'_>>::uninit() }; FEW_HEADERS];
    let mut more = Vec::new();
    let mut n = 0;
    for h in s.headers() {
        // One length compare per header until the first WebSocket handshake.
        if h.cgi_name.len() == UPGRADE.len() && h.cgi_name == UPGRADE {
            websocket_asked(h.value);
        }
        match few.get_mut(n) {
            Some(slot) => {
                slot.write(h);
            }
            None => more.push(h),
        }
        n += 1;
    }
    let few = &few[..n.min(FEW_HEADERS)];
    // SAFETY: the first `n` slots (at most all) were written above; `Header` is `Copy`.
    let hs = few.iter().map(|h| unsafe { h.assume_init() }).chain(more);
    // SAFETY: with the GIL held; a new list of `n` NULL slots, or NULL with an exception.
    let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(n as ffi::Py_ssize_t))? };
    let mut filled = 0;
    for (i, h) in hs.into_iter().enumerate() {
        let k = h
            .known
            .filter(|&k| known[usize::from(k)].is_some())
            .map(usize::from);
        let cached = match (k, last.as_deref_mut()) {
            (Some(k), Some(last)) => last.get_mut(k),
            _ => None,
        };
        if let Some(Some((value, pair))) = cached.as_deref() {
            if value.as_slice() == h.value {
                let pair = pair.clone_ref(py);
                // SAFETY: `i < n`, the slot is still NULL; SET_ITEM steals the reference.
                unsafe {
                    ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, pair.into_ptr())
                };
                filled += 1;
                continue;
            }
        }
        let name = match k.and_then(|k| known[k].as_ref()) {
            Some(name) => name.bind(py).clone(),
            None => {
                let name = h.name();
                PyBytes::new_with(py, name.len(), |buf| {
                    buf.iter_mut().zip(name).for_each(|(b, n)| *b = n);
                    Ok(())
                })?
            }
        };
        let pair = PyTuple::new(py, [name, PyBytes::new(py, h.value)])?;
        if let Some(slot) = cached {
            match slot {
                Some((value, old)) => {
                    value.clear();
                    value.extend_from_slice(h.value);
                    *old = pair.clone().unbind();
                }
                None => *slot = Some((h.value.to_vec(), pair.clone().unbind())),
            }
        }
        // SAFETY: `i < n`, the slot is still NULL; SET_ITEM steals the new reference.
        unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, pair.into_ptr()) };
        filled += 1;
    }
    // Every slot is set (a list with a NULL slot must never reach Python).
    assert_eq!(filled, n, "a header slot left unset");
    Ok(list)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use pyo3::types::PyList;

    use super::*;
    use crate::proto::props::{cgi_pairs, config, Pairs};

    fn python() {
        crate::wsgi::interpreter::start_for_tests();
    }

    fn listener(protocol: Protocol) -> ListenerInfo {
        ListenerInfo {
            protocol,
            server_name: Arc::from(&b"127.0.0.1"[..]),
            server_port: Arc::from(&b"3031"[..]),
        }
    }

    fn head(pairs: &[(&[u8], &[u8])]) -> Head {
        let mut head = Head {
            buf: bytes::Bytes::new(),
            vars: Vec::new(),
            modifier30: false,
            content_length: 0,
        };
        for (k, v) in pairs {
            head.push_var(k, v);
        }
        head
    }

    /// Builds the scope and checks it equals the Python literal `want` (`STATE` in it
    /// is left to the caller).
    fn check(pairs: &[(&[u8], &[u8])], protocol: Protocol, mounts: &[Vec<u8>], want: &str) {
        python();
        Python::attach(|py| {
            let scope = build(py, &head(pairs), &listener(protocol), mounts, None).unwrap();
            let want = py
                .eval(&std::ffi::CString::new(want).unwrap(), None, None)
                .unwrap();
            assert!(
                scope.eq(&want).unwrap(),
                "got  {}\nwant {}",
                scope.repr().unwrap(),
                want.repr().unwrap()
            );
        });
    }

    const COMMON: &str = "'type': 'http', 'asgi': {'version': '3.0', 'spec_version': '2.4'}, \
                          'extensions': {'http.response.pathsend': {}}";

    #[test]
    fn more_headers_than_the_stack_array_holds_all_arrive_in_order() {
        python();
        let names: Vec<Vec<u8>> = (0..FEW_HEADERS + 8)
            .map(|i| format!("HTTP_X_H{i}").into_bytes())
            .collect();
        let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"REQUEST_METHOD", b"GET")];
        pairs.extend(names.iter().map(|n| (n.as_slice(), &b"v"[..])));
        Python::attach(|py| {
            let scope = build(py, &head(&pairs), &listener(Protocol::Uwsgi), &[], None).unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>)> = scope
                .get_item("headers")
                .unwrap()
                .unwrap()
                .extract()
                .unwrap();
            let want: Vec<(Vec<u8>, Vec<u8>)> = (0..FEW_HEADERS + 8)
                .map(|i| (format!("x-h{i}").into_bytes(), b"v".to_vec()))
                .collect();
            assert_eq!(got, want);
        });
    }

    #[test]
    fn builds_the_scope_of_nginx_uwsgi_params() {
        check(
            &[
                (b"QUERY_STRING", b"q=%C3%A9&x"),
                (b"REQUEST_METHOD", b"POST"),
                (b"CONTENT_TYPE", b"application/json"),
                (b"CONTENT_LENGTH", b"2"),
                (b"REQUEST_URI", b"/app/caf%C3%A9?q=%C3%A9&x"),
                (b"PATH_INFO", "/app/café".as_bytes()),
                (b"DOCUMENT_ROOT", b"/srv"),
                (b"SERVER_PROTOCOL", b"HTTP/2.0"),
                (b"REQUEST_SCHEME", b"https"),
                (b"HTTPS", b"on"),
                (b"REMOTE_ADDR", b"::1"),
                (b"REMOTE_PORT", b"40000"),
                (b"SERVER_PORT", b"443"),
                (b"SERVER_NAME", b"example.test"),
                (b"HTTP_HOST", b"example.test"),
                (b"HTTP_X_WEIRD_NAME", b"\xff\x00v"),
                (b"HTTP_CONTENT_LENGTH", b"2"),
            ],
            Protocol::Uwsgi,
            &[b"/app".to_vec()],
            &format!(
                "{{{COMMON}, 'http_version': '2', 'method': 'POST', 'scheme': 'https', \
                 'path': '/app/café', 'raw_path': b'/app/caf%C3%A9', \
                 'query_string': b'q=%C3%A9&x', 'root_path': '/app', \
                 'headers': [(b'host', b'example.test'), (b'x-weird-name', b'\\xff\\x00v'), \
                 (b'content-type', b'application/json'), (b'content-length', b'2')], \
                 'client': ('::1', 40000), 'server': ('example.test', 443)}}"
            ),
        );
    }

    #[test]
    fn builds_the_scope_of_fastcgi_stock_params_without_request_uri() {
        // fastcgi_params: SCRIPT_NAME is the whole path, empty CONTENT_* on a GET;
        // no REQUEST_URI here (raw_path None), SERVER_PORT not a number.
        check(
            &[
                (b"REQUEST_METHOD", b"GET"),
                (b"SCRIPT_NAME", b"/x/\xff"),
                (b"CONTENT_TYPE", b""),
                (b"CONTENT_LENGTH", b""),
                (b"SERVER_PORT", b"unix"),
                (b"SERVER_PROTOCOL", b"HTTP/9"),
            ],
            Protocol::FastCgi,
            &[],
            &format!(
                "{{{COMMON}, 'http_version': '1.1', 'method': 'GET', 'scheme': 'http', \
                 'path': '/x/\\ufffd', 'raw_path': None, 'query_string': b'', \
                 'root_path': '', 'headers': [], 'client': None, \
                 'server': ('127.0.0.1', None)}}"
            ),
        );
    }

    #[test]
    fn refuses_what_the_environ_refuses() {
        python();
        Python::attach(|py| {
            let l = listener(Protocol::Scgi);
            let r = build(py, &head(&[(b"PATH_INFO", b"/")]), &l, &[], None);
            let e = r.unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.reason.contains("scgi_params"), "{e}");
            let two = head(&[
                (b"REQUEST_METHOD", b"POST"),
                (b"CONTENT_LENGTH", b"1"),
                (b"CONTENT_LENGTH", b"2"),
            ]);
            assert_eq!(build(py, &two, &l, &[], None).unwrap_err().status, 400);
        });
    }

    #[test]
    fn state_is_a_shallow_copy_per_request() {
        python();
        Python::attach(|py| {
            let state = PyDict::new(py);
            let pool = PyList::empty(py);
            state.set_item("pool", &pool).unwrap();
            let h = head(&[(b"REQUEST_METHOD", b"GET")]);
            let l = listener(Protocol::Uwsgi);
            let one = build(py, &h, &l, &[], Some(&state)).unwrap();
            let s1 = one.get_item("state").unwrap().unwrap();
            s1.set_item("added", 1).unwrap();
            assert!(!state.contains("added").unwrap());
            assert!(s1.get_item("pool").unwrap().is(&pool));
            let two = build(py, &h, &l, &[], Some(&state)).unwrap();
            let s2 = two.get_item("state").unwrap().unwrap();
            assert!(!s2.contains("added").unwrap() && !s2.is(&s1));
            // Without lifespan state: no key (the spec's "not supported").
            let three = build(py, &h, &l, &[], None).unwrap();
            assert!(!three.contains("state").unwrap());
            // What an app changes in its scope is its own.
            one.set_item("type", "changed").unwrap();
            let asgi = one.get_item("asgi").unwrap().unwrap();
            asgi.set_item("x", 1).unwrap();
            let four = build(py, &h, &l, &[], Some(&state)).unwrap();
            assert_eq!(four.get_item("type").unwrap().unwrap().to_string(), "http");
            assert!(!four
                .get_item("asgi")
                .unwrap()
                .unwrap()
                .contains("x")
                .unwrap());
            let keys: Vec<String> = four.keys().extract().unwrap();
            assert_eq!(
                keys,
                [
                    "type",
                    "asgi",
                    "http_version",
                    "method",
                    "scheme",
                    "path",
                    "raw_path",
                    "query_string",
                    "root_path",
                    "headers",
                    "client",
                    "server",
                    "state",
                    "extensions"
                ]
            );
        });
    }

    #[test]
    fn a_repeated_request_gets_new_headers_asgi_and_extensions_objects() {
        python();
        let pairs: [(&[u8], &[u8]); 4] = [
            (b"REQUEST_METHOD", b"GET"),
            (b"REMOTE_ADDR", b"127.0.0.1"),
            (b"REMOTE_PORT", b"51234"),
            (b"HTTP_HOST", b"h"),
        ];
        let mut again = pairs;
        again[2].1 = b"51299";
        Python::attach(|py| {
            LAST_SCOPE.with(|last| last.borrow_mut().take());
            let l = listener(Protocol::Uwsgi);
            let first = build(py, &head(&pairs), &l, &[], None).unwrap();
            // What an app may do to its scope never reaches the next request's.
            for k in ["headers", "asgi", "extensions"] {
                let v = first.get_item(k).unwrap().unwrap();
                if let Ok(list) = v.cast::<PyList>() {
                    list.append(("x", "y")).unwrap();
                } else {
                    v.set_item("x", 1).unwrap();
                }
            }
            let before = REPEATS.with(std::cell::Cell::get);
            let second = build(py, &head(&again), &l, &[], None).unwrap();
            assert_eq!(REPEATS.with(std::cell::Cell::get), before + 1);
            let want = py
                .eval(
                    c"{'headers': [(b'host', b'h')], 'asgi': {'version': '3.0', 'spec_version': '2.4'}, 'extensions': {'http.response.pathsend': {}}, 'client': ('127.0.0.1', 51299)}",
                    None,
                    None,
                )
                .unwrap();
            for k in ["headers", "asgi", "extensions", "client"] {
                let (got, want) = (
                    second.get_item(k).unwrap().unwrap(),
                    want.get_item(k).unwrap(),
                );
                assert!(got.eq(&want).unwrap(), "{k}: {}", got.repr().unwrap());
            }
        });
    }

    #[test]
    fn unchanged_header_pairs_are_shared_changed_ones_are_not() {
        python();
        Python::attach(|py| {
            let l = listener(Protocol::Uwsgi);
            let build_with = |ua: &[u8]| {
                let h = head(&[
                    (b"REQUEST_METHOD", b"GET"),
                    (b"HTTP_HOST", b"example.test"),
                    (b"HTTP_USER_AGENT", ua),
                    (b"HTTP_X_OTHER", b"1"),
                ]);
                let d = build(py, &h, &l, &[], None).unwrap();
                // The pair cache alone: a repeated request (the same variables) shares
                // all its pairs with the previous one ([`repeat`]; tuples of bytes
                // cannot change), which this test is not about.
                LAST_SCOPE.with(|last| {
                    if let Some(last) = last.borrow_mut().as_mut() {
                        last.head = None;
                    }
                });
                d
            };
            fn pairs<'py>(d: Bound<'py, PyDict>) -> Bound<'py, PyList> {
                let list = d.get_item("headers").unwrap().unwrap();
                list.cast_into::<PyList>().unwrap()
            }
            let (one, two, three) = (build_with(b"a"), build_with(b"a"), build_with(b"b"));
            let (one, two, three) = (pairs(one), pairs(two), pairs(three));
            assert!(!one.is(&two), "the list is new each time");
            assert!(one.get_item(0).unwrap().is(two.get_item(0).unwrap()));
            assert!(one.get_item(1).unwrap().is(two.get_item(1).unwrap()));
            // A changed value is a new pair; names outside KNOWN are never cached.
            assert!(!two.get_item(1).unwrap().is(three.get_item(1).unwrap()));
            assert!(!one.get_item(2).unwrap().is(two.get_item(2).unwrap()));
            let ua: (Vec<u8>, Vec<u8>) = three.get_item(1).unwrap().extract().unwrap();
            assert_eq!(ua, (b"user-agent".to_vec(), b"b".to_vec()));
            assert!(one.eq(&two).unwrap());
        });
    }

    /// A test request's variables as owned pairs: the usual ones, then the others.
    fn owned_vars(
        (usual, other): &(Vec<(&'static str, &'static str)>, Pairs),
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        usual
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .chain(other.iter().map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }

    /// [`head`] of owned pairs.
    fn as_head(pairs: &[(Vec<u8>, Vec<u8>)]) -> Head {
        let b: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        head(&b)
    }

    /// A scope made from an earlier one (`got`) is the one built key by key (`fresh`):
    /// equal, with the same keys in the same order; or both refused alike.
    fn same_scope(
        got: Result<Bound<'_, PyDict>, ScopeRefusal>,
        fresh: Result<Bound<'_, PyDict>, ScopeRefusal>,
    ) -> Result<(), TestCaseError> {
        match (got, fresh) {
            (Ok(a), Ok(b)) => {
                prop_assert!(
                    a.eq(&b).unwrap(),
                    "{} != {}",
                    a.repr().unwrap(),
                    b.repr().unwrap()
                );
                let (ka, kb): (Vec<String>, Vec<String>) =
                    (a.keys().extract().unwrap(), b.keys().extract().unwrap());
                prop_assert_eq!(ka, kb);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a.is_ok(), b.is_ok()),
        }
        Ok(())
    }

    /// The variables nginx sends, each with one of two or three values, so that two
    /// requests share some values and differ in others.
    fn usual_vars() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        let one = |k: &'static str, vs: &'static [&'static str]| {
            proptest::sample::select(vs).prop_map(move |v| (k, v))
        };
        (
            one("REQUEST_METHOD", &["GET", "POST", "HEAD"]),
            one("PATH_INFO", &["/", "/app/a", "/caf\u{e9}"]),
            one("REQUEST_URI", &["/", "/app/a?x=1", "/caf%C3%A9"]),
            one("QUERY_STRING", &["", "x=1"]),
            one("SERVER_PROTOCOL", &["HTTP/1.1", "HTTP/2.0", "HTTP/1.0"]),
            one("REQUEST_SCHEME", &["http", "https"]),
            one("REMOTE_ADDR", &["127.0.0.1", "::1"]),
            one("REMOTE_PORT", &["51234", "51235"]),
            one("SERVER_NAME", &["", "example.test"]),
            one("SERVER_PORT", &["80", "443"]),
        )
            .prop_map(|(a, b, c, d, e, f, g, h, i, j)| vec![a, b, c, d, e, f, g, h, i, j])
    }

    proptest! {
        #![proptest_config(config(64))]

        /// A scope made from the previous one on the thread ([`LastScope`]) is the scope
        /// built key by key: the same keys in the same order, the same values.
        #[test]
        fn props_a_scope_refilled_from_the_last_one_equals_a_fresh_one(
            first in (usual_vars(), cgi_pairs()), second in (usual_vars(), cgi_pairs()),
            state in any::<bool>()
        ) {
            python();
            let (first, second) = (owned_vars(&first), owned_vars(&second));
            let l = listener(Protocol::Uwsgi);
            let mounts = [b"/app".to_vec()];
            Python::attach(|py| -> Result<(), TestCaseError> {
                let st = PyDict::new(py);
                st.set_item("k", 1).unwrap();
                let st = state.then_some(&st);
                let _ = build(py, &as_head(&first), &l, &mounts, st);
                // Then back to the first: what the second left kept (a port not kept)
                // must not leak into the third.
                let refilled = [
                    build(py, &as_head(&second), &l, &mounts, st),
                    build(py, &as_head(&first), &l, &mounts, st),
                ];
                for (got, pairs) in refilled.into_iter().zip([&second, &first]) {
                    LAST_SCOPE.with(|last| last.borrow_mut().take());
                    same_scope(got, build(py, &as_head(pairs), &l, &mounts, st))?;
                }
                Ok(())
            })?;
        }

        /// A request with the previous request's variables but REMOTE_PORT gets the
        /// previous scope again ([`repeat`]) with its own port: equal to the scope built
        /// key by key, the same keys in the same order; any other byte that differs, or
        /// a port that is not digits of the same length, is built in full (and equal).
        #[test]
        fn props_a_repeated_request_gets_the_scope_a_full_build_gives(
            first in (usual_vars(), cgi_pairs()),
            port in proptest::sample::select(&["51234", "60001", "1", "", "x1234", "99999"][..]),
            other in any::<bool>(),
            state in any::<bool>()
        ) {
            python();
            let first = owned_vars(&first);
            let ports = first.iter().filter(|(k, _)| k == b"REMOTE_PORT").count();
            let old = first.iter().find(|(k, _)| k == b"REMOTE_PORT").map(|(_, v)| v.clone());
            let mut second = first.clone();
            for (k, v) in second.iter_mut() {
                if k == b"REMOTE_PORT" {
                    *v = port.as_bytes().to_vec();
                }
            }
            if other {
                // One more byte anywhere else: never the previous scope.
                second.push((b"HTTP_X_OTHER".to_vec(), b"1".to_vec()));
            }
            let l = listener(Protocol::Uwsgi);
            let mounts = [b"/app".to_vec()];
            Python::attach(|py| -> Result<(), TestCaseError> {
                let st = PyDict::new(py);
                st.set_item("k", 1).unwrap();
                let st = state.then_some(&st);
                LAST_SCOPE.with(|last| last.borrow_mut().take());
                let built = build(py, &as_head(&first), &l, &mounts, st);
                let before = REPEATS.with(std::cell::Cell::get);
                let got = build(py, &as_head(&second), &l, &mounts, st);
                let repeated = REPEATS.with(std::cell::Cell::get) > before;
                let digits_alike = old.as_ref().is_some_and(|o| {
                    o.len() == port.len() && port.bytes().all(|b| b.is_ascii_digit())
                });
                if built.is_ok() && ports == 1 && !other && digits_alike {
                    prop_assert!(repeated, "a repeat not recognised");
                }
                if other {
                    prop_assert!(!repeated, "a different request taken for a repeat");
                }
                LAST_SCOPE.with(|last| last.borrow_mut().take());
                same_scope(got, build(py, &as_head(&second), &l, &mounts, st))

            })?;
        }

        /// Any variables: a scope or a 400, never a panic; the headers a list of pairs of
        /// bytes, the path a `str` starting with root_path.
        #[test]
        fn props_any_variables_give_a_scope_or_a_400(pairs in cgi_pairs(), fastcgi in any::<bool>()) {
            python();
            let pairs: &Pairs = &pairs;
            let borrowed: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let protocol = if fastcgi { Protocol::FastCgi } else { Protocol::Uwsgi };
            Python::attach(|py| -> Result<(), TestCaseError> {
                match build(py, &head(&borrowed), &listener(protocol), &[b"/app".to_vec()], None) {
                    Err(e) => prop_assert_eq!(e.status, 400),
                    Ok(scope) => {
                        let get = |k: &str| scope.get_item(k).unwrap().unwrap();
                        for h in get("headers").cast::<PyList>().unwrap().iter() {
                            let (n, v): (Vec<u8>, Vec<u8>) = h.extract().unwrap();
                            prop_assert!(!n.is_empty());
                            let _ = v;
                        }
                        let path: String = get("path").extract().unwrap();
                        let root: String = get("root_path").extract().unwrap();
                        prop_assert!(path.starts_with(&root));
                    }
                }
                Ok(())
            })?;
        }
    }
}
