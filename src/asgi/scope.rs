//! The HTTP connection scope. STUB by "core" so the tree compiles and requests can be
//! served; "scope" owns this file and replaces it (the real rules: percent-decoded
//! UTF-8 path, root_path, raw_path, headers each once, client/server, extensions).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::codec::Head;
use crate::wsgi::ListenerInfo;

/// A request the scope cannot describe: answered with `status`, not served.
#[derive(Debug)]
pub struct ScopeRefusal {
    pub status: u16,
    pub reason: String,
}

/// Builds the scope dict of one HTTP request (stub: the plain fields only).
pub fn build<'py>(
    py: Python<'py>,
    head: &Head,
    _listener: &ListenerInfo,
    _mounts: &[Vec<u8>],
    state: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyDict>, ScopeRefusal> {
    let refuse = |e: PyErr| ScopeRefusal {
        status: 500,
        reason: e.to_string(),
    };
    let text = |k: &[u8]| String::from_utf8_lossy(head.get(k).unwrap_or(b"")).into_owned();
    (|| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("type", "http")?;
        let asgi = PyDict::new(py);
        asgi.set_item("version", "3.0")?;
        asgi.set_item("spec_version", "2.4")?;
        d.set_item("asgi", asgi)?;
        d.set_item("http_version", "1.1")?;
        d.set_item("method", text(b"REQUEST_METHOD"))?;
        d.set_item("scheme", "http")?;
        d.set_item("path", text(b"PATH_INFO"))?;
        d.set_item(
            "raw_path",
            PyBytes::new(py, head.get(b"PATH_INFO").unwrap_or(b"")),
        )?;
        d.set_item(
            "query_string",
            PyBytes::new(py, head.get(b"QUERY_STRING").unwrap_or(b"")),
        )?;
        d.set_item("root_path", "")?;
        let headers = PyList::empty(py);
        for (k, v) in head.pairs() {
            let name = if let Some(h) = k.strip_prefix(b"HTTP_") {
                h.iter()
                    .map(|c| {
                        if *c == b'_' {
                            b'-'
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect::<Vec<u8>>()
            } else if k == b"CONTENT_TYPE" && !v.is_empty() {
                b"content-type".to_vec()
            } else if k == b"CONTENT_LENGTH" && !v.is_empty() {
                b"content-length".to_vec()
            } else {
                continue;
            };
            headers.append(PyTuple::new(
                py,
                [PyBytes::new(py, &name), PyBytes::new(py, v)],
            )?)?;
        }
        d.set_item("headers", headers)?;
        d.set_item("client", py.None())?;
        d.set_item("server", py.None())?;
        if let Some(s) = state {
            d.set_item("state", s.copy()?)?;
        }
        Ok(d)
    })()
    .map_err(refuse)
}
