//! Builds the environ dict from a request head (PEP 3333, PROTOCOLS.md §4): CGI keys and
//! values are latin-1 native strings; standard keys are interned once per thread.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};
use pyo3::{ffi, intern};

use super::errors::Errors;
use super::file_wrapper::FileWrapper;
use super::input::Input;
use super::{ListenerInfo, Settings};
use crate::codec::{Head, Protocol};
use crate::logging::RequestId;
use crate::proto::cgi::{self, Defaults};

/// CGI keys common enough to keep one interned `str` each. Only fixed names are
/// interned: a request choosing arbitrary header names must not grow the intern table.
const STANDARD_KEYS: &[&str] = &[
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_ADDR",
    "SERVER_SOFTWARE",
    "REQUEST_URI",
    "REQUEST_SCHEME",
    "DOCUMENT_ROOT",
    "DOCUMENT_URI",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "GATEWAY_INTERFACE",
    "HTTPS",
    "UWSGI_SCHEME",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_CONNECTION",
    "HTTP_COOKIE",
    "HTTP_REFERER",
    "HTTP_ORIGIN",
    "HTTP_AUTHORIZATION",
    "HTTP_CACHE_CONTROL",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_REAL_IP",
    "HTTP_X_REQUESTED_WITH",
    "HTTP_UPGRADE_INSECURE_REQUESTS",
];

/// Per-thread constants for building environs.
pub struct Keys {
    standard: rustc_hash::FxHashMap<&'static [u8], Py<PyString>>,
    version: Py<PyTuple>,
    file_wrapper: Py<PyType>,
}

impl Keys {
    pub fn new(py: Python<'_>) -> Self {
        Keys {
            standard: STANDARD_KEYS
                .iter()
                .map(|k| (k.as_bytes(), PyString::intern(py, k).unbind()))
                .collect(),
            version: PyTuple::new(py, [1, 0]).expect("a tuple of ints").unbind(),
            file_wrapper: py.get_type::<FileWrapper>().unbind(),
        }
    }

    fn key<'py>(&self, py: Python<'py>, k: &[u8]) -> Bound<'py, PyString> {
        match self.standard.get(k) {
            Some(s) => s.bind(py).clone(),
            None => latin1(py, k),
        }
    }
}

/// Decodes bytes as latin-1 (every byte is one code point ≤ U+00FF): PEP 3333's
/// "bytes-as-str" native strings.
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: PyUnicode_DecodeLatin1 reads exactly `len` bytes from `ptr` and returns a
    // new reference, or NULL with an exception set (only on memory exhaustion).
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(
            b.as_ptr().cast(),
            b.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        Bound::from_owned_ptr(py, ptr).cast_into_unchecked()
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
    input: Bound<'py, Input>,
    errors: Bound<'py, Errors>,
) -> PyResult<Built<'py>> {
    let cgi = cgi::normalise(
        head.pairs(),
        Defaults {
            server_name: &listener.server_name,
            server_port: &listener.server_port,
            modifier30: head.modifier30,
            script_name_is_path: listener.protocol != Protocol::Uwsgi,
            mounts: &settings.mounts,
        },
    )
    .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let env = PyDict::new(py);
    let mut is_head = false;
    for (k, v) in &cgi.vars {
        if *k == b"REQUEST_METHOD" {
            is_head = &**v == b"HEAD";
        }
        env.set_item(keys.key(py, k), latin1(py, v))?;
    }
    env.set_item(intern!(py, "wsgi.version"), keys.version.bind(py))?;
    let scheme = match cgi.scheme {
        "https" => intern!(py, "https"),
        _ => intern!(py, "http"),
    };
    env.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
    env.set_item(intern!(py, "wsgi.input"), input)?;
    env.set_item(intern!(py, "wsgi.errors"), errors)?;
    env.set_item(
        intern!(py, "wsgi.multithread"),
        PyBool::new(py, settings.threads > 1),
    )?;
    env.set_item(
        intern!(py, "wsgi.multiprocess"),
        PyBool::new(py, settings.multiprocess),
    )?;
    env.set_item(intern!(py, "wsgi.run_once"), PyBool::new(py, false))?;
    env.set_item(intern!(py, "wsgi.input_terminated"), PyBool::new(py, true))?;
    env.set_item(intern!(py, "wsgi.file_wrapper"), keys.file_wrapper.bind(py))?;
    // Always set, so one key works whether or not the front server sent an id (its
    // `HTTP_X_REQUEST_ID`, when sent, is in the environ as it came).
    env.set_item(
        intern!(py, "postern.request_id"),
        PyString::new(py, request_id.as_str()),
    )?;
    Ok(Built {
        environ: env,
        method_missing: cgi.method_missing,
        is_head,
    })
}
