//! The ONLY module that imports pyo3: the embedded interpreter, the app, and everything
//! PEP 3333 asks of a server. The server layer hands a [`Request`] to the [`pool`] and
//! reads the reply as [`Out`] messages; no `Py` object ever crosses to a tokio thread.
//!
//! - [`interpreter`]: PyConfig start-up, `--venv`, importing `module:callable`.
//! - [`pool`]: the Python threads that run requests (`--threads`).
//! - [`environ`]: CGI vars → the environ dict (latin-1 native strings).
//! - [`input`], [`errors`]: `wsgi.input` and `wsgi.errors`.
//! - [`response`]: `start_response`, `write()`, iterating the result, `close()`.
//! - [`file_wrapper`]: `wsgi.file_wrapper`, sent with sendfile(2) where it can be.

pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod input;
pub mod interpreter;
pub mod pool;
pub mod response;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;

use crate::codec::Head;

/// Errors of the Python layer; each message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum WsgiError {
    #[error("could not start Python: {reason}")]
    Init { reason: String },
    #[error("--venv {}: {reason}", venv.display())]
    Venv { venv: PathBuf, reason: String },
    #[error(
        "could not import the app {app:?} (check the APP argument, --chdir, --pythonpath and --venv):\n{traceback}"
    )]
    Import { app: String, traceback: String },
    #[error("the app {app:?} has no attribute '{tried}'; name the callable as MODULE:CALLABLE")]
    NoCallable { app: String, tried: String },
    #[error("'{name}' in {app:?} is a {kind}, not a WSGI callable")]
    NotCallable {
        app: String,
        name: String,
        kind: String,
    },
}

/// The request body, complete before the app runs (nginx buffers bodies by default,
/// and a slow client must never hold a Python thread).
#[derive(Debug)]
pub enum Body {
    Empty,
    Memory(Bytes),
    /// Spooled to an unlinked temporary file (over `--body-spool-threshold`).
    File(std::fs::File, u64),
}

/// Facts about the listener a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Defaults for SERVER_NAME / SERVER_PORT when the front server sent none.
    pub server_name: Arc<[u8]>,
    pub server_port: Arc<[u8]>,
}

/// One request for the pool.
pub struct Request {
    pub head: Head,
    pub body: Body,
    pub listener: ListenerInfo,
    pub out: tokio::sync::mpsc::Sender<Out>,
    pub span: tracing::Span,
}

/// What the Python side sends back, in order; `End` is always last. If the channel
/// closes without `End`, the response is incomplete: abort the connection.
#[derive(Debug)]
pub enum Out {
    Data(Bytes),
    /// A regular file region for sendfile(2); the fd is a dup the receiver owns.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    End(Outcome),
}

/// How the response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// false: the body is incomplete (app error after the headers, short
    /// Content-Length); the connection must be aborted, not closed cleanly.
    pub complete: bool,
}

/// Runtime settings the Python side needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub threads: usize,
    pub multiprocess: bool,
}

/// Formats a Python exception with its traceback, as `traceback.print_exception` would.
/// Never uses `PyErr_Print`, which would exit the process on `SystemExit`.
pub fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py
            .import("traceback")?
            .call_method1(
                "format_exception",
                (err.get_type(py), err.value(py), err.traceback(py)),
            )?;
        let parts: Vec<String> = lines.extract()?;
        Ok(parts.concat())
    })();
    formatted.unwrap_or_else(|_| format!("{err}\n"))
}
