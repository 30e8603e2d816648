//! `wsgi.input` (PEP 3333, docs/protocols.md §4.6): a binary stream that ends exactly at the
//! body's end, so `wsgi.input_terminated` is always true. File reads run with the GIL
//! released.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::{Body, BodyStream};

/// The error kind of a [`BodyStream`] read that failed because the front server
/// aborted the request or closed the connection (nobody is left to answer).
pub const BODY_GONE: std::io::ErrorKind = std::io::ErrorKind::ConnectionReset;

/// The error kind of a [`BodyStream`] read that failed because the front server ended
/// the body before its CONTENT_LENGTH (FastCGI STDIN): its input, not the app, is at
/// fault, and it still waits for an answer (400).
pub const BODY_SHORT: std::io::ErrorKind = std::io::ErrorKind::UnexpectedEof;

/// The error kind of a [`BodyStream`] read that failed because postern dropped the
/// body: a multiplexed FastCGI connection held more unread input than
/// `--fastcgi-buffer` allows while another request on it waited for its own. Neither
/// the app's fault nor its client's: answered 503 (retry), as a server out of room.
/// Made by [`dropped`] only, and told by its payload ([`is_dropped`]), not by the kind
/// alone, which other aborts share.
pub const BODY_DROPPED: std::io::ErrorKind = std::io::ErrorKind::ConnectionAborted;

/// The payload of a [`BODY_DROPPED`] error.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was dropped: its FastCGI connection held more unread input than --fastcgi-buffer allows while another request on it waited for its own")
    }
}

impl std::error::Error for Dropped {}

/// The error of a body postern dropped ([`BODY_DROPPED`]).
pub fn dropped() -> std::io::Error {
    std::io::Error::new(BODY_DROPPED, Dropped)
}

/// `e` is a [`dropped`] error.
pub fn is_dropped(e: &std::io::Error) -> bool {
    e.kind() == BODY_DROPPED && e.get_ref().is_some_and(|x| x.is::<Dropped>())
}

/// What [`Input::watched`]'s flag says of a failed body read: [`BODY_GONE`]'s.
pub const CUT_GONE: u8 = 1;
/// [`BODY_SHORT`]'s.
pub const CUT_SHORT: u8 = 2;
/// [`BODY_GONE`]'s, for a peer the bad-input log limit does not name this time
/// ([`gone`]): its line is at debug, counted in the limit's summary instead.
pub const CUT_GONE_UNNAMED: u8 = 3;
/// [`BODY_DROPPED`]'s.
pub const CUT_DROPPED: u8 = 4;
/// The bits of [`Input::watched`]'s flag beside a [`CUT_GONE`] or [`CUT_GONE_UNNAMED`]
/// that say postern closed the connection itself, and why ([`ClosedBy::bits`]).
pub const CUT_BY: u8 = 0x30;

/// Why postern closed a FastCGI connection itself while a request's body still came on
/// it. Its app's read fails as when the front server goes (nobody is left to answer),
/// but the request's lines say postern closed it, and why, not that the client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The front server sent nothing for `--read-timeout`.
    ReadTimeout,
    /// The front server sent bytes that are no FastCGI on the connection.
    BadInput,
    /// Closed at `--max-connections` for a connection waiting: the body came too slowly.
    Room,
}

impl ClosedBy {
    /// What the app's failed read and the request's line say.
    pub fn says(self) -> &'static str {
        match self {
            ClosedBy::ReadTimeout => {
                "postern closed the connection: the front server sent nothing for --read-timeout"
            }
            ClosedBy::BadInput => {
                "postern closed the connection: the front server sent bad FastCGI input on it"
            }
            ClosedBy::Room => {
                // The WARN line before it says which room was wanted. regression (probe
                // 389): it named --max-connections when every thread was busy.
                "postern closed the connection: the body came too slowly, with another waiting for room (--max-connections, or every Python thread or --max-concurrency place taken)"
            }
        }
    }

    /// How its request's access line ends.
    pub fn ending(self) -> crate::logging::Ending {
        use crate::logging::Ending;
        match self {
            ClosedBy::ReadTimeout => Ending::BodyStalled,
            ClosedBy::BadInput => Ending::BadInput,
            ClosedBy::Room => Ending::BodyTooSlow,
        }
    }

    /// Its bits in [`Input::watched`]'s flag ([`CUT_BY`]).
    pub fn bits(self) -> u8 {
        match self {
            ClosedBy::ReadTimeout => 0x10,
            ClosedBy::BadInput => 0x20,
            ClosedBy::Room => 0x30,
        }
    }

    /// Read back from [`Input::watched`]'s flag.
    pub fn of_cut(cut: u8) -> Option<ClosedBy> {
        match cut & CUT_BY {
            0x10 => Some(ClosedBy::ReadTimeout),
            0x20 => Some(ClosedBy::BadInput),
            0x30 => Some(ClosedBy::Room),
            _ => None,
        }
    }
}

/// The payload of a [`BODY_GONE`] error ([`gone`], [`closed`]).
#[derive(Debug)]
struct Gone {
    /// false: the server layer's bad-input limit spent its line elsewhere (its count is
    /// in that limit's summary line).
    named: bool,
    by: Option<ClosedBy>,
}

/// What a [`BODY_GONE`] error of a [`BodyStream`] says when the front server went.
const GONE: &str = "the front server aborted the request or closed the connection";

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.by.map_or(GONE, ClosedBy::says))
    }
}

impl std::error::Error for Gone {}

/// The [`BODY_GONE`] error of a body the front server cut; `named`: false when the
/// bad-input limit counts it for its summary instead of naming it (a flood of requests
/// cut mid-body names the first few peers only): its line is then at debug.
pub fn gone(named: bool) -> std::io::Error {
    closed(named, None)
}

/// [`gone`], or, with `by`, the error of a body cut because postern closed its
/// connection itself.
pub fn closed(named: bool, by: Option<ClosedBy>) -> std::io::Error {
    std::io::Error::new(BODY_GONE, Gone { named, by })
}

fn gone_payload(e: &std::io::Error) -> Option<&Gone> {
    if e.kind() != BODY_GONE {
        return None;
    }
    e.get_ref().and_then(|x| x.downcast_ref::<Gone>())
}

/// `e` is a [`BODY_GONE`] error made by [`gone`] for a cut not named.
pub fn is_unnamed_gone(e: &std::io::Error) -> bool {
    gone_payload(e).is_some_and(|g| !g.named)
}

/// `e` is a [`BODY_GONE`] error of a body cut because postern closed its connection:
/// why.
pub fn closed_by(e: &std::io::Error) -> Option<ClosedBy> {
    gone_payload(e).and_then(|g| g.by)
}

/// How the message of the `OSError` a body read cut short raises begins.
pub const BODY_CUT: &str = "the request body was cut short";

/// Read-ahead from a spooled body file.
const FILE_BLOCK: usize = 64 * 1024;

#[pyclass(module = "postern", name = "Input")]
pub struct Input {
    /// Bytes available without touching the file.
    pending: Bytes,
    file: Option<std::fs::File>,
    /// Next offset to read from `file`, and its length.
    file_pos: u64,
    file_len: u64,
    /// A body still arriving (FastCGI STDIN); `None` once it has ended.
    stream: Option<Box<dyn BodyStream>>,
    /// Set when a read of `stream` failed because the front server aborted the request
    /// or closed the connection ([`CUT_GONE`]: the app's error is then the client gone,
    /// not a bug), or ended the body short ([`CUT_SHORT`]: bad input, answered 400).
    gone: Option<Arc<AtomicU8>>,
    /// The request is over ([`Input::end`]): reads raise.
    ended: bool,
}

/// What a read of `wsgi.input` raises once its request is over ([`Input::end`]).
const READ_AFTER_END: &str = "wsgi.input read after its request ended (the response was sent): the body is not kept past its request";

impl Input {
    pub fn new(body: Body) -> Self {
        let mut stream = None;
        let (pending, file, file_len) = match body {
            Body::Empty => (Bytes::new(), None, 0),
            Body::Memory(b) => (b, None, 0),
            Body::File(f, len) => (Bytes::new(), Some(f), len),
            Body::Stream(s) => {
                stream = Some(s);
                (Bytes::new(), None, 0)
            }
        };
        Input {
            pending,
            file,
            file_pos: 0,
            file_len,
            stream,
            gone: None,
            ended: false,
        }
    }

    /// The request is over (its response sent, the app's `close()` called): a spooled
    /// body's file is closed now, which gives its disk space back at once instead of
    /// when the garbage collector frees a `wsgi.input` that a reference cycle through
    /// the environ keeps (Django's request objects make one); a later read of it raises
    /// [`READ_AFTER_END`]. A body held in memory (at most `--body-spool-threshold`)
    /// stays readable, as it always was, for a thread the app started (Flask's
    /// `copy_current_request_context`); a body still streaming (FastCGI STDIN) says
    /// itself that its request is over.
    /// regression (probe 412): Django workers held up to 28 unlinked 50 MB spool files
    /// (1.4 GB of /tmp, RAM where /tmp is a tmpfs) after their uploads were answered.
    pub fn end(&mut self) {
        if self.file.is_none() {
            return;
        }
        self.file = None;
        self.file_pos = 0;
        self.file_len = 0;
        self.pending = Bytes::new();
        self.ended = true;
    }

    /// As [`Input::new`]; `gone` is set once a read finds the front server gone (see
    /// [`BODY_GONE`]).
    pub fn watched(body: Body, gone: Arc<AtomicU8>) -> Self {
        Input {
            gone: Some(gone),
            ..Input::new(body)
        }
    }

    /// Refills `pending` from the file or the stream; false at the end of the body.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        if !self.pending.is_empty() {
            return Ok(true);
        }
        if self.ended {
            return Err(PyOSError::new_err(READ_AFTER_END));
        }
        if let Some(stream) = &mut self.stream {
            loop {
                match py.detach(|| stream.next_chunk()) {
                    Ok(Some(b)) if b.is_empty() => continue,
                    Ok(Some(b)) => {
                        self.pending = b;
                        return Ok(true);
                    }
                    Ok(None) => {
                        self.stream = None;
                        return Ok(false);
                    }
                    Err(e) => {
                        let by = closed_by(&e).map_or(0, ClosedBy::bits);
                        let cut = match e.kind() {
                            BODY_GONE if is_unnamed_gone(&e) => CUT_GONE_UNNAMED | by,
                            BODY_GONE => CUT_GONE | by,
                            BODY_SHORT => CUT_SHORT,
                            BODY_DROPPED if is_dropped(&e) => CUT_DROPPED,
                            _ => 0,
                        };
                        if let (Some(gone), true) = (&self.gone, cut != 0) {
                            gone.store(cut, Ordering::Release);
                        }
                        return Err(PyOSError::new_err(format!("{BODY_CUT}: {e}")));
                    }
                }
            }
        }
        let Some(file) = &self.file else {
            return Ok(false);
        };
        if self.file_pos >= self.file_len {
            return Ok(false);
        }
        let want = usize::try_from(self.file_len - self.file_pos)
            .unwrap_or(usize::MAX)
            .min(FILE_BLOCK);
        let pos = self.file_pos;
        let mut buf = BytesMut::zeroed(want);
        let n = py
            .detach(|| file.read_at(&mut buf, pos))
            .map_err(|e| PyOSError::new_err(format!("reading the spooled request body: {e}")))?;
        if n == 0 {
            return Err(PyOSError::new_err("the spooled request body ended early"));
        }
        buf.truncate(n);
        self.file_pos += n as u64;
        self.pending = buf.freeze();
        Ok(true)
    }

    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.pending.len());
        self.pending.split_to(n)
    }

    /// Reads up to `limit` bytes (all with `None`).
    fn read_bytes(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Vec<u8>> {
        let mut out = Vec::new();
        let mut left = limit.unwrap_or(usize::MAX);
        while left > 0 && self.fill(py)? {
            let chunk = self.take(left);
            left -= chunk.len();
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads one line including its `\n`, at most `limit` bytes.
    fn read_line(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Vec<u8>> {
        let mut out = Vec::new();
        let mut left = limit.unwrap_or(usize::MAX);
        while left > 0 && self.fill(py)? {
            let window = left.min(self.pending.len());
            match self.pending[..window].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&self.take(i + 1));
                    break;
                }
                None => {
                    out.extend_from_slice(&self.take(window));
                    left -= window;
                }
            }
        }
        Ok(out)
    }
}

/// `None` or a negative size means "no limit", as in `io.RawIOBase`.
fn size_arg(size: Option<i64>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size);
        // Fast path: the whole request in memory, read in one go.
        if self.file.is_none() && self.stream.is_none() && !self.ended {
            let chunk = self.take(limit.unwrap_or(usize::MAX));
            return Ok(PyBytes::new(py, &chunk));
        }
        let data = self.read_bytes(py, limit)?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (size=None))]
    fn read1<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, size)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.read_line(py, size_arg(size))?;
        Ok(PyBytes::new(py, &line))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.read_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn readinto(&mut self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((buffer,))?
            .call_method1("cast", ("B",))?;
        let data = self.read_bytes(py, Some(view.len()?))?;
        let n = data.len();
        view.set_item(
            pyo3::types::PySlice::new(py, 0, n as isize, 1),
            PyBytes::new(py, &data),
        )?;
        Ok(n)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }

    fn readable(&self) -> bool {
        true
    }

    fn seekable(&self) -> bool {
        false
    }

    fn writable(&self) -> bool {
        false
    }

    fn close(&mut self) {}

    #[getter]
    fn closed(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_postern_cut_says_why_and_keeps_whether_it_was_named() {
        for by in [ClosedBy::ReadTimeout, ClosedBy::BadInput, ClosedBy::Room] {
            assert_eq!(ClosedBy::of_cut(CUT_GONE | by.bits()), Some(by));
            assert_eq!(ClosedBy::of_cut(CUT_GONE_UNNAMED | by.bits()), Some(by));
            assert_eq!((CUT_GONE_UNNAMED | by.bits()) & !CUT_BY, CUT_GONE_UNNAMED);
            for named in [true, false] {
                let e = closed(named, Some(by));
                assert_eq!(e.kind(), BODY_GONE);
                assert_eq!(closed_by(&e), Some(by));
                assert_eq!(is_unnamed_gone(&e), !named);
                assert_eq!(e.to_string(), by.says());
            }
        }
        for cut in [0, CUT_GONE, CUT_GONE_UNNAMED, CUT_SHORT, CUT_DROPPED] {
            assert_eq!(ClosedBy::of_cut(cut), None);
        }
        let e = gone(false);
        assert_eq!((closed_by(&e), is_unnamed_gone(&e)), (None, true));
        assert_eq!(e.to_string(), GONE);
        assert_eq!(closed_by(&dropped()), None);
    }
}
