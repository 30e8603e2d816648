//! Calling the app and sending its response (PEP 3333, docs/protocols.md §5): the
//! `start_response` callable, `write()`, iteration of the result, `close()` on every
//! path, Content-Length honoured, and errors turned into a 500 or an aborted
//! connection. Bytes go to the front server through the request's `Sink`, written with the
//! GIL released.

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::environ::{self, Keys};
use super::errors::Errors;
use super::file_wrapper::FileWrapper;
use super::input::Input;
use super::{traceback, AppError, End, Monitor, Request, Sent, Served, Settings, Sink};
use crate::proto::response::{self as resp, HeaderError};

/// A first body chunk this large is written after the head instead of copied behind it.
const SEPARATE_BODY: usize = 16 * 1024;

/// The largest response head (status line and headers) an app may send, in bytes. nginx
/// reads the head into one `uwsgi_buffer_size`/`fastcgi_buffer_size`/`scgi_buffer_size`
/// buffer (4 or 8 KiB by default, raised by operators to 16-64 KiB) and answers 502
/// "upstream sent too big header" beyond it: a larger head can only fail, and refusing it
/// in the app names the cause instead of building a head of any size.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// The parts of a list or tuple body are copied into one buffer up to this size (one
/// write instead of many); a larger part is sent as it is, never copied.
const COALESCE: usize = 64 * 1024;

thread_local! {
    /// Where a response's head and (small) first chunk are put together; at most
    /// about `SEPARATE_BODY` plus a head, kept for the thread's next response.
    static HEAD_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The peer went away; stop producing output.
#[derive(Debug)]
struct Gone;

/// The `start_response` callable (and, through it, `write`) of one request. The app
/// may call these from any thread, so the state sits behind a mutex that is never held
/// while Python code runs, and waited for only with the GIL released (no deadlock).
#[pyclass(module = "postern", name = "StartResponse", frozen)]
pub struct Responder {
    /// parking_lot's: its try_lock and unlock are one compare-and-swap each, inlined,
    /// and it has no poisoning to check (std's was ignored here: `into_inner`).
    state: Mutex<State>,
}

type Mutex<T> = parking_lot::Mutex<T>;
type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

/// Locks the responder's state: at once with the GIL held when it is free (the pool
/// thread's usual case: a request's state is locked only by the thread serving it,
/// and by an app thread that calls `write`), else waiting with the GIL released. A
/// handful of instructions, taken several times per request: always inlined, the
/// wait out of line.
#[inline(always)]
fn st<'a>(r: &'a Bound<'_, Responder>) -> MutexGuard<'a, State> {
    let state = &r.get().state;
    match state.try_lock() {
        Some(guard) => guard,
        None => st_waiting(r.py(), state),
    }
}

/// [`st`] when another thread holds the state (it may be writing with the GIL
/// released, or need the GIL to finish): waits with the GIL released, as pyo3's
/// `lock_py_attached` does.
#[cold]
#[inline(never)]
fn st_waiting<'a>(py: Python<'_>, state: &'a Mutex<State>) -> MutexGuard<'a, State> {
    // The guard cannot cross `detach` (it is not `Send`): taken inside, kept locked,
    // and remade on this side.
    py.detach(|| std::mem::forget(state.lock()));
    // SAFETY: this thread took the lock just above and has not released it (its
    // guard was forgotten): the new guard is the only one, and unlocks it once.
    unsafe { state.make_guard_unchecked() }
}

/// The response state of one request.
struct State {
    sink: Box<dyn Sink>,
    /// `start_response` accepted a status and headers (they are in `head`).
    accepted: bool,
    code: u16,
    /// The status (latin-1, `status_len` bytes), then one `Name: value\r\n` line per
    /// header: encoded while they are checked, so writing the head reads no Python
    /// object again.
    head: Vec<u8>,
    status_len: usize,
    content_length: Option<u64>,
    /// `start_response` was called (successfully or not).
    called: bool,
    headers_sent: bool,
    /// Bytes of the head sent (for [`State::mark_answered`]).
    head_sent: u64,
    body_sent: u64,
    /// [`State::mark_answered`] has told the monitor.
    marked: bool,
    /// HEAD request: headers only, whatever the app produces.
    is_head: bool,
    client_gone: bool,
    /// Gone because the front server read nothing for `--read-timeout` (postern
    /// closed): [`End::Stalled`].
    stalled: bool,
    used_write: bool,
    overflowed: bool,
    /// The request is over: `write` raises.
    finished: bool,
    /// The next write completes the response ([`Sink::write_last`]).
    last_write: bool,
    /// The app failed this request (for the metrics).
    app_error: Option<AppError>,
    /// Set by `wsgi.input` when reading a streamed body found the front server gone
    /// (FastCGI ABORT_REQUEST or a closed connection): an app that fails then failed
    /// for want of its body, the client's doing ([`fail`]); or found it ended short
    /// of CONTENT_LENGTH (FastCGI STDIN): the front server's bad input, answered 400.
    /// [`super::input::CUT_GONE`], [`super::input::CUT_SHORT`], else 0.
    body_gone: Option<Arc<std::sync::atomic::AtomicU8>>,
    /// A `wsgi.file_wrapper` file sent with sendfile(2) ended before the length
    /// announced for it (it shrank, or its size was not its content's: sysfs): the
    /// response is cut off, postern's doing, not the client's.
    file_short: bool,
    /// The bound `write` that `start_response` returns, made once per responder (a
    /// responder serves its thread's requests one after another: [`reuse`]). It refers
    /// to the responder, so [`reuse`] drops it when the responder is not kept.
    write: Option<Py<PyAny>>,
    /// Its thread's slot for a stop that cuts the request off (set once per responder).
    inflight: Option<Arc<super::inflight::Slot>>,
    /// The worker's monitor and its thread's index, told when a response has gone out
    /// whole ([`State::mark_answered`]; set once per responder).
    monitor: Option<(Arc<dyn super::Monitor>, usize)>,
}

impl State {
    fn new(sink: Box<dyn Sink>, is_head: bool) -> Self {
        State {
            sink,
            accepted: false,
            code: 0,
            head: Vec::new(),
            status_len: 0,
            content_length: None,
            called: false,
            headers_sent: false,
            head_sent: 0,
            body_sent: 0,
            marked: false,
            is_head,
            client_gone: false,
            stalled: false,
            used_write: false,
            overflowed: false,
            finished: false,
            last_write: false,
            app_error: None,
            body_gone: None,
            file_short: false,
            write: None,
            inflight: None,
            monitor: None,
        }
    }

    /// The state of a new request on a kept responder: as [`State::new`], with the
    /// head buffer and the bound `write` kept.
    fn renew(&mut self, sink: Box<dyn Sink>, is_head: bool) {
        let mut head = std::mem::take(&mut self.head);
        head.clear();
        let write = self.write.take();
        let inflight = self.inflight.take();
        let monitor = self.monitor.take();
        *self = State::new(sink, is_head);
        self.head = head;
        self.write = write;
        self.inflight = inflight;
        self.monitor = monitor;
    }

    /// Tells the monitor, once, that the response has gone out whole (its head, the
    /// whole body its Content-Length announced, nothing still queued), before the
    /// app's `close()` and the request's end run: they need the GIL, which another
    /// thread may hold as it crashes the worker, and the master then counts the
    /// request as served instead of cut off (the client had it all). Only a response
    /// with a Content-Length, or with no body to send (HEAD, 204, 304): without one,
    /// the front server has it whole only once postern ends it (a clean close,
    /// END_REQUEST), which a crash does not do (review 403: a crash reset such a uwsgi
    /// response, curl saw it cut short, and it was counted 2xx). Never over FastCGI,
    /// where only END_REQUEST, after `close()`, ends a response (review 405).
    /// regression (probe 396 M1): 832 crashes among 1,954 requests at 1 x 2 moved about
    /// 190 delivered 200s to `status="none"`.
    fn mark_answered(&mut self) {
        let whole = !self.marked
            && self.accepted
            && self.headers_sent
            && !self.client_gone
            && !self.file_short
            && !self.sink.has_pending()
            && self.sink.whole_at_length()
            && (self.head_only() || self.content_length.is_some_and(|cl| self.body_sent >= cl));
        if whole {
            self.tell_answered(self.head_sent + self.body_sent);
        }
    }

    /// The sink has ended the response whole (`finish` with [`End::Complete`]: a
    /// clean close, FastCGI's END_REQUEST), which [`State::mark_answered`] cannot
    /// tell beforehand for a response without a Content-Length or over FastCGI: the
    /// front server has all of it now. The request's end (its access line, its
    /// scoreboard line) follows; a kill in between no longer leaves it named cut off.
    /// regression (probe 407): FastCGI responses nginx had delivered whole (some with
    /// the worker's own `served` line) were said cut off and counted `none` when a
    /// SIGKILL came right after their END_REQUEST.
    fn mark_ended_whole(&mut self, bytes: u64) {
        if !self.marked && self.accepted && self.headers_sent {
            self.tell_answered(bytes);
        }
    }

    /// Marks the response answered whole for a stop ([`super::inflight`]) and the
    /// worker's monitor (the master), once: `bytes` sent, head and body.
    fn tell_answered(&mut self, bytes: u64) {
        self.marked = true;
        if let Some(s) = &self.inflight {
            s.answered();
        }
        if let Some((m, thread)) = &self.monitor {
            m.answered(*thread, self.code, bytes);
        }
    }

    /// How far the response got, for a stop that cuts it off.
    fn progress(&self) {
        self.progress_before(0);
    }

    /// [`State::progress`] while a write of the last `pending` body bytes is under
    /// way: its status is known, its bytes count once the write returns. regression
    /// (probes 370, 372): a request cut off while blocked in a large write was named
    /// with all of that write's bytes sent (8,388,608 where about 0.2 MB had left).
    fn progress_before(&self, pending: u64) {
        if let Some(s) = &self.inflight {
            s.progress(self.code, self.body_sent - pending);
        }
    }

    fn head_only(&self) -> bool {
        self.is_head || resp::status_has_no_body(self.code)
    }

    fn head_bytes(&self, extra: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32 + self.head.len() + extra);
        self.write_head_into(&mut buf);
        buf
    }

    fn write_head_into(&self, buf: &mut Vec<u8>) {
        let (status, lines) = self.head.split_at(self.status_len.min(self.head.len()));
        let status: &[u8] = if self.accepted {
            status
        } else {
            b"500 Internal Server Error"
        };
        resp::write_head_lines(buf, self.sink.head_style(), status, lines);
    }

    /// Sets the status postern answers with itself (its headers follow).
    fn set_status(&mut self, code: u16, status: &str) {
        self.head.clear();
        resp::push_latin1(&mut self.head, status);
        self.status_len = self.head.len();
        self.code = code;
        self.accepted = true;
    }

    /// Adds a header postern computed (the Content-Length of a complete body).
    fn push_header(&mut self, name: &str, value: &str) {
        resp::push_header_line(&mut self.head, name, value);
    }

    /// Writes to the front server: what the connection takes at once goes out with the
    /// GIL held (`Sink::try_write` never blocks), and only a remainder that must wait
    /// for the front server to read is written with the GIL released.
    fn emit(&mut self, py: Python<'_>, data: &[u8]) -> Result<(), Gone> {
        crate::forked::guard();
        if self.client_gone {
            return Err(Gone);
        }
        let sink = &mut self.sink;
        let last = std::mem::take(&mut self.last_write);
        let written = match sink.try_write(data, last) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(n) => py.detach(|| {
                if last {
                    sink.write_last(&data[n..])
                } else {
                    sink.write_all(&data[n..])
                }
            }),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stalled |= crate::logging::write_failed(&e);
                self.client_gone = true;
                Err(Gone)
            }
        }
    }

    /// Writes the head and a large first chunk: what the connection takes of the two
    /// at once in one system call ([`Sink::try_write_pair`]), the rest as
    /// [`State::emit`] writes it.
    fn emit_pair(&mut self, py: Python<'_>, head: &[u8], data: &[u8]) -> Result<(), Gone> {
        crate::forked::guard();
        if self.client_gone {
            return Err(Gone);
        }
        let n = match self.sink.try_write_pair(head, data) {
            Ok(n) => n,
            Err(e) => {
                self.stalled |= crate::logging::write_failed(&e);
                self.client_gone = true;
                return Err(Gone);
            }
        };
        let last = std::mem::take(&mut self.last_write);
        if n < head.len() {
            self.emit(py, &head[n..])?;
            self.last_write = last;
            return self.emit(py, data);
        }
        let rest = &data[n - head.len()..];
        if rest.is_empty() {
            return Ok(());
        }
        self.last_write = last;
        self.emit(py, rest)
    }

    /// Sends body bytes, preceded by the headers the first time anything is sent.
    fn send_body(&mut self, py: Python<'_>, data: &[u8]) -> Result<(), Gone> {
        crate::forked::guard();
        if data.is_empty() {
            return Ok(());
        }
        let mut data = data;
        if self.head_only() {
            // No body goes out at all: nothing exceeds the Content-Length.
            // regression (probe 338): a HEAD whose body (not sent) was longer than its
            // Content-Length logged that the excess was not sent, at ERROR.
            data = &[];
        } else if let Some(cl) = self.content_length {
            let left = usize::try_from(cl - self.body_sent.min(cl)).unwrap_or(usize::MAX);
            if data.len() > left {
                if !self.overflowed {
                    tracing::error!(
                        content_length = cl,
                        "the app sent more body than its Content-Length; the excess is not sent"
                    );
                    self.overflowed = true;
                }
                data = &data[..left];
            }
        }
        self.body_sent += data.len() as u64;
        self.progress_before(data.len() as u64);
        let sent = self.send_body_now(py, data);
        if sent.is_ok() {
            self.progress();
        }
        sent
    }

    /// [`State::send_body`]'s write of `data` (counted already, cut to the
    /// Content-Length): the headers first if they have not gone out.
    fn send_body_now(&mut self, py: Python<'_>, data: &[u8]) -> Result<(), Gone> {
        if !self.headers_sent {
            self.headers_sent = true;
            if data.len() >= SEPARATE_BODY {
                // A large first chunk is not copied behind the head: both leave in
                // one vectored send where the sink has one, else in two writes (one
                // more system call costs less than copying it).
                let head = self.head_bytes(0);
                self.head_sent = head.len() as u64;
                return self.emit_pair(py, &head, data);
            }
            // Headers and the first chunk leave in one write, assembled in this
            // thread's buffer (no allocation per response).
            HEAD_BUF.with(|b| {
                let mut buf = b.borrow_mut();
                buf.clear();
                self.write_head_into(&mut buf);
                self.head_sent = buf.len() as u64;
                buf.extend_from_slice(data);
                self.emit(py, &buf)
            })
        } else if data.is_empty() {
            Ok(())
        } else {
            self.emit(py, data)
        }
    }

    /// Sends the parts of a list or tuple body, `total` bytes in all (out of line: the
    /// usual body is one part).
    #[inline(never)]
    fn send_parts(
        &mut self,
        py: Python<'_>,
        items: &[Bound<'_, PyAny>],
        total: usize,
    ) -> Result<(), Failure> {
        if total <= COALESCE {
            let mut all = Vec::with_capacity(total);
            for item in items {
                all.extend_from_slice(body_bytes(item)?.as_bytes());
            }
            let _ = self.send_body(py, &all);
            return Ok(());
        }
        // Small parts are gathered up to COALESCE; a large one goes out as it is: a
        // list of big bytes objects is never copied into one buffer of its size.
        let last = std::mem::take(&mut self.last_write);
        let mut last_part = 0;
        for (i, item) in items.iter().enumerate() {
            if !body_bytes(item)?.as_bytes().is_empty() {
                last_part = i;
            }
        }
        let mut buf = Vec::with_capacity(COALESCE);
        for (i, item) in items.iter().enumerate() {
            let data = body_bytes(item)?.as_bytes();
            if buf.len() + data.len() <= COALESCE {
                buf.extend_from_slice(data);
                continue;
            }
            if self.send_body(py, &buf).is_err() {
                return Ok(());
            }
            buf.clear();
            if data.len() < COALESCE {
                buf.extend_from_slice(data);
                continue;
            }
            self.last_write = last && i == last_part;
            if self.send_body(py, data).is_err() {
                return Ok(());
            }
        }
        self.last_write = last;
        let _ = self.send_body(py, &buf);
        Ok(())
    }

    /// Sends the headers if nothing has gone out yet (empty body).
    fn flush_headers(&mut self, py: Python<'_>) -> Result<(), Gone> {
        if self.headers_sent {
            return Ok(());
        }
        let buf = self.head_bytes(0);
        self.headers_sent = true;
        self.head_sent = buf.len() as u64;
        self.progress();
        self.emit(py, &buf)
    }

    /// Checks the app's status and headers and encodes them into `head` (cleared
    /// first): the status as latin-1, then one `Name: value\r\n` line per header kept.
    /// Returns the code, the status's length in `head` and the app's Content-Length.
    fn validate<'py>(
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        head: &mut Vec<u8>,
    ) -> PyResult<(u16, usize, Option<u64>)> {
        head.clear();
        // Room for a usual head at once (a buffer grown line by line reallocates
        // several times); a kept responder's buffer has it already.
        head.reserve(256);
        let status = status.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "start_response() status must be str, not {}",
                type_name(status)
            ))
        })?;
        // Sizes are counted in characters before any is read as UTF-8 or copied into an
        // error message: a latin-1 character is one byte on the wire, and anything else
        // is refused anyway.
        let mut size = "HTTP/1.1 \r\n\r\n".len() + chars(status);
        if size > HEAD_LIMIT {
            return Err(too_big("status", size));
        }
        let status = utf8(status)?;
        let code = resp::parse_status(status).map_err(refuse)?;
        resp::push_latin1(head, status);
        resp::complete_status(head, status, code);
        let status_len = head.len();
        let no_length = code == 204;
        let mut content_length = None;
        let mut at = 0;
        let mut one = |item: Bound<'py, PyAny>| -> PyResult<()> {
            let pair = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "each header must be a (name, value) tuple, not {}",
                    type_name(&item)
                ))
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each header must be a (name, value) tuple",
                ));
            }
            let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
            let text = |o: Bound<'py, PyAny>, what: &str| -> PyResult<Bound<'py, PyString>> {
                o.cast_into::<PyString>().map_err(|e| {
                    PyTypeError::new_err(format!(
                        "header {what} must be str, not {}",
                        type_name(&e.into_inner())
                    ))
                })
            };
            let (name_s, value_s) = (text(name, "name")?, text(value, "value")?);
            size += chars(&name_s) + ": \r\n".len() + chars(&value_s);
            if size > HEAD_LIMIT {
                return Err(too_big("header block", size));
            }
            let (name, value) = (utf8(&name_s)?, utf8(&value_s)?);
            let pos = at;
            at += 1;
            if let Some(cl) = CHECKED.with(|c| {
                let c = c.borrow();
                let e = c.get(pos).filter(|e| e.matches(name, value))?;
                // A second Content-Length is not sent (refused below if it differs).
                let again = e.content_length.is_some() && content_length.is_some();
                if !(again || (no_length && e.content_length.is_some())) {
                    head.extend_from_slice(&e.line);
                }
                Some(e.content_length)
            }) {
                if let Some(cl) = cl {
                    content_length = Some(resp::one_length(content_length, cl).map_err(refuse)?);
                }
                return Ok(());
            }
            resp::check_header(name, value).map_err(refuse)?;
            if resp::is_hop_by_hop(name) {
                if resp::is_connection_noise(name, value.as_bytes()) {
                    tracing::debug!(header = %name, "the app set a hop-by-hop header; dropped");
                } else {
                    tracing::warn!(
                        header = %name,
                        "the app set a hop-by-hop header; dropped (the front server owns the connection)"
                    );
                }
                return Ok(());
            }
            // regression: a `Status` header went out as a second CGI `Status:` line over
            // FastCGI and SCGI, and over uwsgi reached the client as a header: the
            // status is start_response's alone.
            if name.len() == 6 && name.eq_ignore_ascii_case("status") {
                tracing::warn!(
                    header = %name,
                    "the app set a Status header; dropped (the status is the one given to start_response)"
                );
                return Ok(());
            }
            let mut cl = None;
            if name.eq_ignore_ascii_case("content-length") {
                let this = resp::parse_content_length(value).map_err(refuse)?;
                if content_length.is_some() {
                    // The same value again: sent once (not kept among the checked
                    // headers: only lines that go out are).
                    content_length = Some(resp::one_length(content_length, this).map_err(refuse)?);
                    tracing::debug!(
                        "the app set Content-Length twice, with the same value; sent once"
                    );
                    return Ok(());
                }
                cl = Some(this);
                content_length = cl;
                if no_length {
                    // A 204 has no Content-Length (RFC 9110 §8.6: a server must not
                    // send one): its line is dropped, as its body is (checked all the
                    // same: two are refused, as on any response).
                    // regression (hostile LOW): nginx passed the app's on to clients.
                    tracing::debug!("the app set Content-Length on a 204; dropped");
                }
            }
            let start = head.len();
            if !(no_length && cl.is_some()) {
                resp::push_header_line(head, name, value);
            }
            // (A Content-Length dropped from a 204 has no line to keep.)
            if pos < CHECKED_MAX && !(no_length && cl.is_some()) {
                CHECKED.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.len() <= pos {
                        c.resize_with(pos + 1, Checked::default);
                    }
                    c[pos].set(name, value, &head[start..], cl);
                });
            }
            Ok(())
        };
        // A plain list (the usual case) is read by index, without an iterator object;
        // nothing above runs Python code, so it cannot change meanwhile.
        if let Ok(list) = headers.cast_exact::<PyList>() {
            for item in list.iter() {
                one(item)?;
            }
        } else {
            for item in headers.try_iter().map_err(|_| {
                PyTypeError::new_err(
                    "start_response() headers must be a list of (name, value) tuples",
                )
            })? {
                one(item?)?;
            }
        }
        Ok((code, status_len, content_length.filter(|_| !no_length)))
    }
}

/// A header an earlier response of this thread had at the same position in its list,
/// checked and kept: its line as encoded and its Content-Length. Apps send the same
/// headers response after response (often the very same list); a pair with the same
/// bytes gets the same verdict, so it is copied instead of checked and encoded again.
/// Only headers that were kept go here (a dropped one is warned about every time).
#[derive(Default)]
struct Checked {
    /// False until set: no pair matches an empty entry.
    kept: bool,
    name: Vec<u8>,
    value: Vec<u8>,
    line: Vec<u8>,
    content_length: Option<u64>,
}

impl Checked {
    fn matches(&self, name: &str, value: &str) -> bool {
        self.kept
            && crate::proto::cgi::same(&self.name, name.as_bytes())
            && crate::proto::cgi::same(&self.value, value.as_bytes())
    }

    fn set(&mut self, name: &str, value: &str, line: &[u8], content_length: Option<u64>) {
        for (to, from) in [
            (&mut self.name, name.as_bytes()),
            (&mut self.value, value.as_bytes()),
            (&mut self.line, line),
        ] {
            to.clear();
            to.extend_from_slice(from);
        }
        self.content_length = content_length;
        self.kept = true;
    }
}

/// Positions kept in [`CHECKED`] (a longer list checks the rest every time).
const CHECKED_MAX: usize = 16;

thread_local! {
    static CHECKED: std::cell::RefCell<Vec<Checked>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `s` as UTF-8 (CPython's cached form): `to_str` without its second UTF-8 check of
/// what CPython has just encoded (this runs for the status and every header name and
/// value of every response).
fn utf8<'a>(s: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    let mut len: pyo3::ffi::Py_ssize_t = 0;
    // SAFETY: `s` is a live str; PyUnicode_AsUTF8AndSize returns its UTF-8 form (valid
    // UTF-8 by contract, kept in the object for its lifetime, which `'a` borrows) and
    // its length, or NULL with an exception set (lone surrogates).
    unsafe {
        let p = pyo3::ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len);
        if p.is_null() {
            return Err(PyErr::fetch(s.py()));
        }
        let bytes = std::slice::from_raw_parts(p.cast::<u8>(), usize::try_from(len).unwrap_or(0));
        Ok(std::str::from_utf8_unchecked(bytes))
    }
}

/// The length of `s` in characters, read from the object (no call, no error path: this
/// runs for every header of every response).
fn chars(s: &Bound<'_, PyString>) -> usize {
    // SAFETY: `s` is a live str object (the type is checked by `Bound<PyString>`), and
    // its length field is set when it is created.
    let n = unsafe { pyo3::ffi::PyUnicode_GET_LENGTH(s.as_ptr()) };
    usize::try_from(n).unwrap_or(0)
}

/// A response head over [`HEAD_LIMIT`]: logged here (the app may swallow the exception)
/// and raised as ValueError inside the app. `size` is what was counted when it went over.
#[cold]
#[inline(never)]
fn too_big(what: &str, size: usize) -> PyErr {
    let msg = format!(
        "start_response(): the response {what} reaches {size} bytes, over the {HEAD_LIMIT}-byte limit of a response head \
         (nginx refuses a head larger than its uwsgi/fastcgi/scgi_buffer_size with \"upstream sent too big header\"); \
         send large data in the body"
    );
    tracing::error!(
        limit = HEAD_LIMIT,
        "{msg}; raised ValueError in the app (the request answers 500 unless the app handles it)"
    );
    PyValueError::new_err(msg)
}

/// Who tells this process whether it is the first of its generation of workers to warn
/// about a status past 599 (set once, by [`watch_statuses`]); none: a single process,
/// where the process is the generation.
static STATUS_GATE: OnceLock<Arc<dyn Monitor>> = OnceLock::new();

/// Called as the app's threads or loop start: the monitor, when there is one, decides
/// whether [`warn_past_defined`] may warn.
pub(crate) fn watch_statuses(monitor: Option<&Arc<dyn Monitor>>) {
    if let Some(m) = monitor {
        let _ = STATUS_GATE.set(Arc::clone(m));
    }
}

/// A status code past 599 (RFC 9110 §15 defines 100 to 599) goes out as sent, as nginx,
/// uWSGI and gunicorn pass it on; the first one is warned about once per generation of
/// workers, WSGI's or ASGI's: a worker recycled by --max-requests or --max-rss is
/// replaced by one that would say it again. Called once the status and every header
/// passed their checks (a refused one answers 500: nothing past 599 went out). `asgi`:
/// the line names the ASGI path (`postern::asgi::http`), not this module, so that a
/// filter on either interface's target sees its own app's answers.
pub(crate) fn warn_past_defined(code: u16, asgi: bool) {
    // Asked once per process: the scoreboard is not looked at on every response.
    static ASKED: AtomicBool = AtomicBool::new(false);
    if code > resp::PAST_DEFINED
        && !ASKED.swap(true, Ordering::Relaxed)
        && STATUS_GATE
            .get()
            .is_none_or(|m| m.first_to_warn_past_defined())
    {
        const PAST: &str = "the app answered a status code past 599, outside those HTTP defines (100 to 599): passed on as sent (warned once per generation of workers)";
        if asgi {
            tracing::warn!(target: "postern::asgi::http", status = code, "{PAST}");
        } else {
            tracing::warn!(status = code, "{PAST}");
        }
    }
}

/// A refused status or header: logged here (the app may swallow the exception) and
/// raised as ValueError inside the app.
fn refuse(e: HeaderError) -> PyErr {
    tracing::error!(error = %e, "start_response() refused a status or header; the request will answer 500");
    PyValueError::new_err(e.to_string())
}

#[pymethods]
impl Responder {
    /// The responder is itself the app's `start_response` (PEP 3333 asks for a
    /// callable, nothing more): no bound method is made for each request.
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start_response(slf, status, headers, exc_info)
    }

    /// `start_response(status, response_headers, exc_info=None)` → `write`.
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn start_response<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        let (headers_sent, called, mut head) = {
            let mut me = st(slf);
            // regression (probe 412 NIT): said 'called a second time without exc_info'.
            if me.finished {
                return Err(PyOSError::new_err(
                    "start_response() called after its request was over (a start_response kept from an earlier request: each request has its own)",
                ));
            }
            let seen = (me.headers_sent, me.called);
            me.called = true;
            // A call that goes on to validation encodes into the same buffer (a refused
            // one leaves the state not `accepted`, so what it held is never written);
            // one that raises below leaves the head as it was.
            let goes_on = if exc_info.is_some() { !seen.0 } else { !seen.1 };
            let head = if goes_on {
                std::mem::take(&mut me.head)
            } else {
                Vec::new()
            };
            (seen.0, seen.1, head)
        };
        match exc_info {
            Some(exc) if headers_sent => {
                // PEP 3333: re-raise the exception the app is handling.
                let value = exc.get_item(1)?;
                let tb = exc.get_item(2)?;
                let value = if tb.is_none() {
                    value
                } else {
                    value.call_method1(intern!(py, "with_traceback"), (tb,))?
                };
                return Err(PyErr::from_value(value));
            }
            Some(_) => {}
            None if called => {
                return Err(PyAssertionError::new_err(
                    "start_response() called a second time without exc_info (PEP 3333)",
                ));
            }
            None => {}
        }
        // Validation runs Python code (iterating the headers): not under the lock.
        let validated = State::validate(status, headers, &mut head);
        if let Ok((code, ..)) = validated {
            warn_past_defined(code, false);
        }
        let mut me = st(slf);
        match validated {
            Ok((code, status_len, cl)) => {
                me.accepted = true;
                me.code = code;
                me.head = head;
                me.status_len = status_len;
                me.content_length = cl;
            }
            Err(e) => {
                me.accepted = false;
                me.head = head;
                return Err(e);
            }
        }
        if let Some(write) = &me.write {
            return Ok(write.bind(py).clone());
        }
        drop(me);
        let write = slf.getattr(intern!(py, "write"))?;
        st(slf).write = Some(write.clone().unbind());
        Ok(write)
    }

    /// The legacy `write(data)` callable: sends at once (headers first).
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let bytes = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!("write() needs bytes, not {}", type_name(data)))
        })?;
        let mut me = st(slf);
        if me.finished {
            return Err(PyOSError::new_err(
                "write() called after the request was over",
            ));
        }
        if !me.accepted {
            return Err(PyAssertionError::new_err(
                "write() called before start_response()",
            ));
        }
        me.used_write = true;
        me.send_body(py, bytes.as_bytes())
            .map_err(|Gone| PyOSError::new_err("client disconnected"))
    }
}

/// Why a request failed in the app.
enum Failure {
    Raised(PyErr),
    Mistake(String),
}

/// The access line's status of a request not run because its front server went away
/// while it waited for a thread: 0, as for a body cut before the app runs (nothing was
/// answered; not a 4xx in the metrics).
const CLIENT_GONE_UNRUN: u16 = 0;

/// Runs one request on this (attached) pool thread, start to finish, inside its span,
/// and writes its access line; returns how it ended and what was sent, and whether a
/// stop cut it off meanwhile (named, its access line written and counted).
pub fn handle(
    py: Python<'_>,
    keys: &Keys,
    app: &Py<PyAny>,
    settings: &Settings,
    mut req: Request,
) -> (Served, bool) {
    let span = std::mem::replace(&mut req.span, crate::logging::RequestSpan::none());
    let _entered = span.enter();
    let mut served = respond(py, keys, app, settings, &mut req, span.peer());
    served.end = served.end.as_answered(&served.sent);
    // A stop that cut this request off named it and wrote its access line already.
    let named = keys.inflight.end(&mut req.head);
    let (status, mut ending) = served.end.for_log();
    if served.sent.late {
        ending = ending.past_timeout();
    }
    if !span.is_disabled() {
        crate::logging::record_end(status, served.sent.started);
    }
    // Formatted and written once the pool thread has released the GIL.
    if !named && crate::logging::access_enabled() {
        crate::logging::access_later(crate::logging::Finished {
            head: req.head,
            id: req.request_id,
            protocol: req.listener.protocol,
            status,
            ending,
            bytes: served.sent.bytes,
            started: served.sent.started,
        });
    }
    (served, named)
}

/// A request refused for malformed variables: true when its WARN line is logged (the
/// first of the bad-input window's lines), false when it is counted for the window's
/// summary.
fn bad_input(peer: &str) -> bool {
    use crate::server::slow_clients::{self, Reason};
    slow_clients::bad_input_on(None, peer, Reason::Malformed, false)
}

fn respond(
    py: Python<'_>,
    keys: &Keys,
    app: &Py<PyAny>,
    settings: &Settings,
    req: &mut Request,
    peer: &str,
) -> Served {
    // A request that waited for a thread whose front server is gone meanwhile is not
    // run: nobody would read its answer, and a thread it took would make the requests
    // behind it wait longer still (an overload, a client flood of resets). Its access
    // line says the client went away, with status 0.
    // regression (probe 335, MEDIUM): 64 multiplexed FastCGI requests queued on one
    // connection, then a reset: all 64 ran, two at a time, for 16 s; 12 uwsgi
    // connections reset after their request: 8 ran after the client was gone.
    // A body still streaming (FastCGI STDIN) is not looked at here: its app's first
    // read fails at once, and that read is where a cut body is said and counted
    // (through the bad-input limit, one named line then a summary, as over uwsgi).
    if req.queued && !matches!(req.body, super::Body::Stream(_)) && req.sink.gone_before_start() {
        tracing::debug!("the front server went away (reset or closed the connection, or aborted the request) while the request waited for a thread: not run");
        let end = End::ClientGone(CLIENT_GONE_UNRUN);
        let sent = req.sink.finish(end);
        return Served {
            end,
            sent,
            app_error: None,
        };
    }
    // Moved out piece by piece: the caller keeps the head and the id for the access
    // line (no copy of the head).
    let body = std::mem::replace(&mut req.body, super::Body::Empty);
    let errors_forward = req.errors_forward.take();
    let mut sink: Box<dyn Sink> = std::mem::replace(&mut req.sink, Box::new(Closed));
    let (head, listener) = (&req.head, &req.listener);
    // Without a body or forwarding, the thread's shared objects in the template serve.
    let body_gone =
        matches!(body, super::Body::Stream(_)).then(Arc::<std::sync::atomic::AtomicU8>::default);
    let input = (!matches!(body, super::Body::Empty)).then(|| {
        let input = match &body_gone {
            Some(gone) => Input::watched(body, Arc::clone(gone)),
            None => Input::new(body),
        };
        Bound::new(py, input).expect("allocating wsgi.input")
    });
    // Ended with the request, whatever still refers to it (`Input::end`).
    let own_input = input.clone();
    // A forwarding wsgi.errors (FastCGI): the thread's kept one when there is one.
    let errors = errors_forward.map(|f| match keys.spare_errors.borrow_mut().take() {
        Some(e) => {
            let e = e.into_bound(py);
            e.borrow_mut().renew(f);
            e
        }
        None => Bound::new(py, Errors::new(Some(f))).expect("allocating wsgi.errors"),
    });
    let own_errors = errors.clone();
    let built = match environ::build(
        py,
        keys,
        head,
        listener,
        settings,
        &req.request_id,
        input,
        errors,
    ) {
        Ok(b) => b,
        Err(e) => {
            // The codec has framed the request; what is left is malformed variables.
            // A peer's input: a flood is summed up by the bad-input limit.
            if bad_input(peer) {
                tracing::warn!(error = %e, "the request's variables are malformed; answered 400");
            }
            return simple(py, sink, 400, "Bad Request");
        }
    };
    if built.method_missing {
        // regression (hostile): a flood of such requests was one WARN line each.
        if bad_input(peer) {
            let params = listener.protocol.params_file();
            tracing::warn!(
                "request has no REQUEST_METHOD; include {params} in the nginx location (answered 400)"
            );
        }
        return simple(py, sink, 400, "Bad Request");
    }
    // The sink moves into the responder; `finish` below takes it back out of use.
    let placeholder: Box<dyn Sink> = Box::new(Closed);
    let sink = std::mem::replace(&mut sink, placeholder);
    let kept = keys
        .responder
        .borrow_mut()
        .take()
        .and_then(|r| r.into_bound(py).cast_into::<Responder>().ok());
    let responder = match kept {
        Some(r) => {
            st(&r).renew(sink, built.is_head);
            r
        }
        None => {
            let mut state = State::new(sink, built.is_head);
            state.inflight = Some(Arc::clone(&keys.inflight));
            state.monitor = settings
                .monitor
                .clone()
                .map(|m| (m, keys.inflight.thread()));
            Bound::new(
                py,
                Responder {
                    state: Mutex::new(state),
                },
            )
            .expect("allocating start_response")
        }
    };
    st(&responder).body_gone = body_gone;
    // Named by a stop that cuts it off while the app runs (`handle` takes it back).
    keys.inflight
        .begin(&mut req.head, &req.request_id, listener.protocol);
    let mut errors_ended = false;
    let outcome = drive(
        py,
        app,
        built.environ,
        &responder,
        own_errors.as_ref(),
        &mut errors_ended,
    );
    keys.end_request(py);
    // (Not while a thread of the app is in the middle of a read of it: freed later.)
    if let Some(Ok(mut input)) = own_input.as_ref().map(|i| i.try_borrow_mut()) {
        input.end();
    }
    // Ended in `drive` already: nothing could reach it since (its count was 1).
    let errors_alone = errors_ended || end_errors_if_alone(own_errors.as_ref());
    let mut r = st(&responder);
    if !r.client_gone && r.sink.has_pending() {
        // A streamed response's last chunks may still be on their way (a writer
        // thread): a failure there is the client gone, as for a direct write.
        let sink = &mut r.sink;
        if let Err(e) = py.detach(|| sink.flush()) {
            r.stalled |= crate::logging::write_failed(&e);
            r.client_gone = true;
        }
    }
    if outcome.complete {
        // Sent whole only now (an empty body's head, a stream's last chunks).
        r.mark_answered();
    }
    // Gone because postern closed the connection while the body came: the sink's
    // `Sent::closed_by` says so ([`End::as_answered`]).
    let end = if r.client_gone && r.stalled {
        End::Stalled(outcome.status)
    } else if r.client_gone {
        End::ClientGone(outcome.status)
    } else if outcome.complete {
        End::Complete(outcome.status)
    } else {
        End::Incomplete(outcome.status)
    };
    // A child the app forked in its iterable or close() ends here, not on the connection.
    crate::forked::guard();
    let sink = &mut r.sink;
    let sent = if sink.finish_is_quick() {
        sink.finish(end)
    } else {
        py.detach(|| sink.finish(end))
    };
    // Not a 504 postern answered in the app's place, nor a response it cut, nor an
    // END_REQUEST that failed or waits for the request's input (review 409).
    if matches!(end, End::Complete(_)) && !sent.late && !sent.cut && r.sink.ended_whole() {
        r.mark_ended_whole(sent.bytes);
    }
    // An app that kept `write` or `start_response` gets an error, not a stale socket.
    r.sink = Box::new(Closed);
    r.client_gone = true;
    r.finished = true;
    let served = Served {
        end,
        sent,
        app_error: r.app_error,
    };
    drop(r);
    reuse(keys, responder);
    if let (true, Some(e)) = (errors_alone, own_errors) {
        *keys.spare_errors.borrow_mut() = Some(e.unbind());
    }
    served
}

/// Ends a forwarding `wsgi.errors` that nothing but this request's own reference
/// reaches any more (the environ is gone, the app kept no reference), as dropping it
/// would: the line so far is logged and forwarded now, before the response ends. True
/// when it was: the object may then serve the thread's next request
/// ([`Errors::renew`]), instead of one allocated and freed per request.
fn end_errors_if_alone(errors: Option<&Bound<'_, Errors>>) -> bool {
    match errors {
        // SAFETY: reading the reference count of a live object.
        Some(e) if unsafe { pyo3::ffi::Py_REFCNT(e.as_ptr()) } == 1 => {
            Errors::end(e);
            true
        }
        _ => false,
    }
}

/// Keeps a finished request's responder for the thread's next request when nothing
/// else can reach it: only this reference and its bound `write` (whose only reference
/// is the responder's, and which no weak reference watches; the responder itself
/// takes none). An app that kept `start_response` or `write` (a global, a thread, a
/// traceback) keeps an object that only raises; the next request gets a new one.
/// Saves allocating the responder and its `write` and freeing both, every request.
fn reuse(keys: &Keys, responder: Bound<'_, Responder>) {
    let mut me = st(&responder);
    let write_alone = match &me.write {
        None => true,
        // SAFETY: the object is alive (we hold a reference); its type is checked
        // before it is read as a C function object (a bound builtin method, what
        // getattr gives for a method of a native class).
        Some(w) => unsafe {
            let p = w.as_ptr();
            (pyo3::ffi::Py_IS_TYPE(p, &raw mut pyo3::ffi::PyCFunction_Type) != 0
                || pyo3::ffi::Py_IS_TYPE(p, &raw mut pyo3::ffi::PyCMethod_Type) != 0)
                && pyo3::ffi::Py_REFCNT(p) == 1
                && (*p.cast::<pyo3::ffi::PyCFunctionObject>())
                    .m_weakreflist
                    .is_null()
        },
    };
    let ours = 1 + pyo3::ffi::Py_ssize_t::from(me.write.is_some());
    // SAFETY: reading the reference count of a live object.
    if write_alone && unsafe { pyo3::ffi::Py_REFCNT(responder.as_ptr()) } == ours {
        drop(me);
        *keys.responder.borrow_mut() = Some(responder.into_any().unbind());
    } else {
        // The bound `write` refers to the responder: dropped here, or the two would
        // keep each other alive.
        let write = me.write.take();
        drop(me);
        drop(write);
    }
}

/// How `drive` ended, before the connection is finished.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    status: u16,
    complete: bool,
}

/// The sink of a finished request.
struct Closed;

impl Sink for Closed {
    fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "the request is over",
        ))
    }
    fn send_file(&mut self, _: &std::fs::File, _: u64, _: u64) -> std::io::Result<()> {
        self.write_all(b"")
    }
    fn finish(&mut self, _: End) -> Sent {
        Sent {
            bytes: 0,
            started: std::time::Instant::now(),
            late: false,
            cut: false,
            closed_by: None,
        }
    }
}

/// Sends a small complete response from the server itself.
fn simple(py: Python<'_>, mut sink: Box<dyn Sink>, code: u16, reason: &str) -> Served {
    crate::forked::guard();
    let buf = resp::plain_response(sink.head_style(), code, reason, &format!("{reason}\n"));
    py.detach(|| {
        let end = match sink.write_all(&buf) {
            Ok(()) => End::Complete(code),
            Err(_) => End::ClientGone(code),
        };
        let sent = sink.finish(end);
        Served {
            end,
            sent,
            app_error: None,
        }
    })
}

fn drive(
    py: Python<'_>,
    app: &Py<PyAny>,
    environ: Bound<'_, pyo3::types::PyDict>,
    responder: &Bound<'_, Responder>,
    errors: Option<&Bound<'_, Errors>>,
    errors_ended: &mut bool,
) -> Outcome {
    let called = app.bind(py).call1((environ, responder));
    // A process the app forked that returned from it ends here, not on the connection.
    crate::forked::guard();
    let result = match called {
        Ok(r) => {
            // An app that returns a list has let go of the environ: its forwarding
            // wsgi.errors ends here, before the body can end the response.
            *errors_ended = end_errors_if_alone(errors);
            r
        }
        Err(e) => {
            return fail(
                py,
                responder,
                Failure::Raised(e),
                "the app raised an exception",
            )
        }
    };
    if result.is_none() {
        return fail(
            py,
            responder,
            Failure::Mistake(
                "the app returned None instead of an iterable of bytes (a missing `return`?)"
                    .into(),
            ),
            "the app broke the WSGI contract",
        );
    }
    let iterated = iterate(py, responder, &result);
    if iterated.is_ok() {
        st(responder).mark_answered();
    }
    // PEP 3333: close() is called on every path, once, whatever happened above.
    // Lists and tuples have no close(); skip the failing attribute lookup (it builds
    // an AttributeError each time).
    let plain = result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>();
    let closed = match if plain {
        Ok(None)
    } else {
        result.getattr_opt(intern!(py, "close"))
    } {
        Ok(Some(close)) => close.call0().map(drop),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(f) = iterated {
        let what = match f {
            Failure::Raised(_) => "the app raised an exception while producing its body",
            Failure::Mistake(_) => "the app broke the WSGI contract",
        };
        if let Err(e) = closed {
            tracing::error!(traceback = %traceback(py, &e), "the result's close() raised too");
        }
        return fail(py, responder, f, what);
    }
    if let Err(e) = closed {
        if st(responder).headers_sent {
            // The response went out whole; a failing close() is the app's to fix,
            // not a reason to break the client's response.
            tracing::error!(detail = %traceback(py, &e), "the result's close() raised an exception");
        } else {
            return fail(
                py,
                responder,
                Failure::Raised(e),
                "the result's close() raised an exception",
            );
        }
    }
    let mut r = st(responder);
    if r.client_gone || r.file_short {
        return Outcome {
            status: r.code,
            complete: false,
        };
    }
    if !r.accepted {
        drop(r);
        let msg = if st(responder).called {
            "start_response() was called but refused the status or headers"
        } else {
            "the app never called start_response()"
        };
        return fail(
            py,
            responder,
            Failure::Mistake(msg.into()),
            "the app broke the WSGI contract",
        );
    }
    // An empty body (a redirect, 204, HEAD): nothing can follow the head, so it ends
    // the response (not armed as one under way; FastCGI: END_REQUEST in the same
    // write), unless a Content-Length says the body is missing.
    let short = r
        .content_length
        .is_some_and(|cl| r.body_sent < cl && !r.head_only());
    r.last_write = !r.headers_sent && !short;
    let flushed = r.flush_headers(py);
    r.last_write = false;
    if flushed.is_err() {
        return Outcome {
            status: r.code,
            complete: false,
        };
    }
    if let Some(cl) = r.content_length {
        if r.body_sent < cl && !r.head_only() {
            tracing::error!(
                sent = r.body_sent,
                content_length = cl,
                "the app sent less body than its Content-Length; aborting the connection"
            );
            return Outcome {
                status: r.code,
                complete: false,
            };
        }
    }
    Outcome {
        status: r.code,
        complete: true,
    }
}

/// Iterates the app's result and sends it. Returns early when the client is gone.
fn iterate(
    py: Python<'_>,
    responder: &Bound<'_, Responder>,
    result: &Bound<'_, PyAny>,
) -> Result<(), Failure> {
    let not_started = || {
        Failure::Mistake(if st(responder).called {
            "start_response() was called but refused the status or headers".into()
        } else {
            "the app produced a body before calling start_response()".into()
        })
    };
    // wsgi.file_wrapper on a regular file: sendfile(2).
    if let Ok(wrapper) = result.cast::<FileWrapper>() {
        if let Some(src) = wrapper.borrow().sendfile_source(py) {
            if !st(responder).accepted {
                return Err(not_started());
            }
            let mut r = st(responder);
            let mut len = src.len;
            match r.content_length {
                Some(cl) => len = len.min(cl),
                // No length on a 204 or 304 (RFC 9110 8.6), as the list path; a HEAD
                // keeps the GET's.
                None if !r.used_write && !r.headers_sent && !resp::status_has_no_body(r.code) => {
                    r.push_header("Content-Length", &len.to_string());
                    r.content_length = Some(len);
                }
                None => {}
            }
            if r.flush_headers(py).is_err() {
                return Ok(());
            }
            if len > 0 && !r.head_only() {
                r.body_sent += len;
                r.progress_before(len);
                let sink = &mut r.sink;
                let sent = py.detach(|| sink.send_file(&src.file, src.offset, len));
                if sent.is_ok() {
                    r.progress();
                }
                if let Err(e) = sent {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        // regression (audit): taken for the client gone (INFO 'client
                        // went away'), where ASGI's pathsend warns.
                        tracing::warn!(
                            length = len,
                            size = src.len,
                            "wsgi.file_wrapper: the file ended before its length (it shrank while it was sent, or its size is not its content's, as a sysfs file's); the response is cut off"
                        );
                        r.file_short = true;
                    } else {
                        r.stalled |= crate::logging::write_failed(&e);
                        r.client_gone = true;
                    }
                }
            }
            return Ok(());
        }
    }
    // A list or tuple is complete already: one buffer, and a Content-Length for free.
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        // The usual body is one item: taken without collecting into a Vec.
        let one = match (result.cast::<PyList>(), result.cast::<PyTuple>()) {
            (Ok(l), _) if l.len() == 1 => Some(l.get_item(0).map_err(Failure::Raised)?),
            (_, Ok(t)) if t.len() == 1 => Some(t.get_item(0).map_err(Failure::Raised)?),
            _ => None,
        };
        let collected: Vec<Bound<'_, PyAny>>;
        let items: &[Bound<'_, PyAny>] = match &one {
            Some(item) => std::slice::from_ref(item),
            None => {
                collected = result
                    .try_iter()
                    .map_err(Failure::Raised)?
                    .collect::<PyResult<_>>()
                    .map_err(Failure::Raised)?;
                &collected
            }
        };
        let mut total = 0usize;
        for item in items {
            total += body_bytes(item)?.as_bytes().len();
        }
        let mut r = st(responder);
        if !r.accepted {
            drop(r);
            return if total == 0 {
                Ok(())
            } else {
                Err(not_started())
            };
        }
        // An empty body on HEAD says nothing of the GET's length (frameworks such as
        // Bottle return `[]` for HEAD): no length, rather than a false `0`.
        if r.content_length.is_none()
            && !r.used_write
            && !r.headers_sent
            && !resp::status_has_no_body(r.code)
            && (!r.is_head || total > 0)
        {
            r.push_header("Content-Length", &total.to_string());
            r.content_length = Some(total as u64);
        }
        // A whole body shorter than the app's Content-Length is known before anything
        // is sent: a 500, rather than a head the client then waits on and a cut.
        // regression (probe 338): answered as a 200 head and an aborted connection.
        if let Some(cl) = r
            .content_length
            .filter(|&cl| (total as u64) < cl && !r.used_write && !r.headers_sent && !r.head_only())
        {
            drop(r);
            return Err(Failure::Mistake(format!(
                "the app's body ({total} bytes in the list it returned) is shorter than its Content-Length ({cl}); nothing was sent"
            )));
        }
        // Nothing can cut the response after this write (no close(), Content-Length
        // met): the sink may end it in the same write (FastCGI: with END_REQUEST).
        r.last_write =
            total > 0 && (r.head_only() || r.content_length.is_none_or(|cl| cl <= total as u64));
        if items.len() == 1 {
            let _ = r.send_body(py, body_bytes(&items[0])?.as_bytes());
        } else {
            r.send_parts(py, items, total)?;
        }
        r.last_write = false;
        return Ok(());
    }
    let iter = result.try_iter().map_err(|_| {
        Failure::Mistake(format!(
            "the app returned a {}, which is not an iterable of bytes",
            type_name(result)
        ))
    })?;
    for item in iter {
        let item = item.map_err(Failure::Raised)?;
        let bytes = body_bytes(&item)?;
        let data = bytes.as_bytes();
        if data.is_empty() {
            continue;
        }
        if !st(responder).accepted {
            return Err(not_started());
        }
        let mut r = st(responder);
        // A first chunk that meets its declared Content-Length is the whole body
        // (Flask's and Django's one-chunk iterators): it does not arm the protection of
        // a response under way (two setsockopt over TCP, FastCGI's list). Without a
        // Content-Length it may be a stream's first event (server-sent events), which a
        // cut before the next one must not make look complete: armed, as a chunk
        // leaving the length short is. regression: review of 6620b2a/e109978: every
        // iterator response paid for it.
        let spare = !r.headers_sent
            && (r.head_only()
                || r.content_length
                    .is_some_and(|cl| r.body_sent + data.len() as u64 >= cl));
        if spare {
            r.sink.maybe_whole(true);
        }
        let sent = r.send_body(py, data);
        if spare {
            r.sink.maybe_whole(false);
        }
        // HEAD, 204, 304: once the headers are out there is nothing more to send, and
        // a stream may never end; stop here (close() still runs).
        if sent.is_err() || r.overflowed || (r.head_only() && r.headers_sent) {
            break;
        }
    }
    Ok(())
}

fn body_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> Result<&'a Bound<'py, PyBytes>, Failure> {
    item.cast::<PyBytes>().map_err(|_| {
        Failure::Mistake(if item.is_instance_of::<PyString>() {
            "the app yielded str; a WSGI body is bytes (encode it, e.g. .encode('utf-8'))".into()
        } else {
            format!(
                "the app yielded a {}; a WSGI body is bytes",
                type_name(item)
            )
        })
    })
}

/// Logs an app failure and answers 500, or aborts when the headers are already out.
/// Whether `e` is the error `wsgi.input` raised for a body cut short, or has it as
/// its cause or context (the app wrapped it).
fn raised_by_body_cut(py: Python<'_>, e: &PyErr) -> bool {
    let mut v = Some(e.value(py).clone().into_any());
    for _ in 0..8 {
        let Some(x) = v else { return false };
        if x.is_instance_of::<pyo3::exceptions::PyOSError>()
            && x.str()
                .is_ok_and(|s| s.to_string_lossy().starts_with(super::input::BODY_CUT))
        {
            return true;
        }
        v = ["__cause__", "__context__"]
            .into_iter()
            .filter_map(|a| x.getattr(a).ok())
            .find(|c| !c.is_none());
    }
    false
}

fn fail(py: Python<'_>, responder: &Bound<'_, Responder>, failure: Failure, what: &str) -> Outcome {
    let detail = match &failure {
        Failure::Raised(e) => traceback(py, e),
        Failure::Mistake(m) => m.clone(),
    };
    let mut r = st(responder);
    let cut = r
        .body_gone
        .as_ref()
        .map_or(0, |g| g.load(Ordering::Acquire));
    // postern closed the connection itself (--read-timeout, bad input): its lines say
    // so, not that the front server went. regression (probe 374): they said it had.
    let closed_by = super::input::ClosedBy::of_cut(cut);
    let cut = cut & !super::input::CUT_BY;
    let body_gone = cut == super::input::CUT_GONE || cut == super::input::CUT_GONE_UNNAMED;
    let from_body_cut = match &failure {
        Failure::Raised(e) => raised_by_body_cut(py, e),
        Failure::Mistake(_) => false,
    };
    // Its read of the body failed for the input, not for a bug of its own: answered
    // (if the headers are not out yet) as the same input is before the app runs, not
    // counted as the app failing. The lane has said why at WARN.
    // regression (audit): a body the front server ended before its CONTENT_LENGTH was
    // answered 500, logged as the app's exception with its traceback and counted as an
    // app error; (probe 335, MEDIUM) so was a body postern dropped, at ERROR, for every
    // such request.
    let refused = match cut {
        super::input::CUT_SHORT => Some((
            "the front server ended it before CONTENT_LENGTH bytes",
            400,
            "400 Bad Request",
            &b"Bad Request: the request body is incomplete.\n"[..],
        )),
        // A multiplexed FastCGI connection over --fastcgi-buffer: a server out of room.
        super::input::CUT_DROPPED => Some((
            "postern dropped it (--fastcgi-buffer)",
            503,
            "503 Service Unavailable",
            &b"Service Unavailable: the request body could not be kept (--fastcgi-buffer); retry.\n"[..],
        )),
        _ => None,
    };
    if let Some((why, code, line, body)) = refused.filter(|_| from_body_cut && !r.client_gone) {
        let error = match &failure {
            Failure::Raised(e) => e.to_string(),
            Failure::Mistake(m) => m.clone(),
        };
        if r.headers_sent {
            tracing::debug!(%error, "could not read the request body: {why}, after the headers were sent; aborting the response");
            return Outcome {
                status: r.code,
                complete: false,
            };
        }
        tracing::debug!(%error, "could not read the request body: {why}; answered {code}");
        return answer_plain(py, &mut r, code, line, body);
    }
    if body_gone && !from_body_cut {
        // The app failed otherwise after its body read did (it caught that error):
        // a bug of its own, logged with its traceback, though nobody is left to answer.
        // regression: it was logged as the front server gone, without its traceback.
        r.client_gone = true;
    }
    if body_gone && from_body_cut {
        // Its read of the body failed because the front server aborted the request or
        // closed the connection: nobody is left to answer, and the app is not at fault
        // (as over uwsgi and SCGI, where the same is found before the app runs).
        r.client_gone = true;
        let error = match &failure {
            Failure::Raised(e) => e.to_string(),
            Failure::Mistake(m) => m.clone(),
        };
        match (closed_by, cut == super::input::CUT_GONE_UNNAMED) {
            (Some(by), true) => {
                tracing::debug!(%error, "could not read the request body: {}; the request ends, unanswered", by.says());
            }
            (Some(by), false) => {
                tracing::warn!(%error, "could not read the request body: {}; the request ends, unanswered", by.says());
            }
            // Past the bad-input limit's named lines: counted in its summary.
            (None, true) => {
                tracing::debug!(%error, "could not read the request body: the front server aborted the request or closed the connection; the request ends (END_REQUEST after an abort; nothing after a close)");
            }
            (None, false) => {
                tracing::warn!(%error, "could not read the request body: the front server aborted the request or closed the connection; the request ends (END_REQUEST after an abort; nothing after a close)");
            }
        }
        return Outcome {
            status: r.code,
            complete: false,
        };
    }
    r.app_error = Some(match failure {
        Failure::Raised(_) => AppError::Exception,
        Failure::Mistake(_) => AppError::Contract,
    });
    if r.client_gone {
        tracing::info!(detail = %detail, "{what} after the client went away");
        return Outcome {
            status: r.code,
            complete: false,
        };
    }
    if r.headers_sent {
        tracing::error!(detail = %detail, "{what} after the headers were sent; aborting the connection");
        return Outcome {
            status: r.code,
            complete: false,
        };
    }
    tracing::error!(detail = %detail, "{what}; answered 500");
    answer_plain(
        py,
        &mut r,
        500,
        "500 Internal Server Error",
        b"Internal Server Error\n",
    )
}

/// Answers for the app, which sent no head: `line` with a plain-text `body` of known
/// length, in place of whatever it had set.
fn answer_plain(py: Python<'_>, r: &mut State, code: u16, line: &str, body: &[u8]) -> Outcome {
    crate::forked::guard();
    r.set_status(code, line);
    r.push_header("Content-Type", "text/plain; charset=utf-8");
    r.push_header("Content-Length", &body.len().to_string());
    r.content_length = Some(body.len() as u64);
    r.body_sent = 0;
    r.overflowed = false;
    let _ = r.send_body(py, body);
    let _ = r.flush_headers(py);
    Outcome {
        status: code,
        complete: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A responder over a finished request's sink: enough to lock its state.
    fn responder(py: Python<'_>) -> Bound<'_, Responder> {
        Bound::new(
            py,
            Responder {
                state: Mutex::new(State::new(Box::new(Closed), false)),
            },
        )
        .expect("allocating a responder")
    }

    /// A FastCGI-like sink: only its end (END_REQUEST) ends a response.
    struct EndsAtFinish;

    impl Sink for EndsAtFinish {
        fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn send_file(&mut self, _: &std::fs::File, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn finish(&mut self, end: End) -> Sent {
            Closed.finish(end)
        }
        fn whole_at_length(&self) -> bool {
            false
        }
    }

    /// What the master would be told through a worker's monitor.
    #[derive(Default)]
    struct Told(Mutex<Vec<(usize, u16, u64)>>);

    impl super::super::Monitor for Told {
        fn begin(
            &self,
            _: usize,
            _: &crate::codec::Head,
            _: &crate::logging::RequestId,
            _: crate::codec::Protocol,
        ) {
        }
        fn end(&self, _: usize, _: Option<&Served>, _: bool) {}
        fn answered(&self, thread: usize, status: u16, bytes: u64) {
            self.0.lock().push((thread, status, bytes));
        }
    }

    // regression (probe 407): a FastCGI response nginx had whole (its END_REQUEST
    // out) was named cut off and counted status="none" when a SIGKILL fell between
    // its END_REQUEST and the request's end: nothing marked it answered.
    #[test]
    fn a_response_is_marked_answered_once_its_sink_has_ended_it_whole() {
        let told = Arc::new(Told::default());
        let mut state = State::new(Box::new(EndsAtFinish), false);
        state.monitor = Some((told.clone(), 3));
        state.accepted = true;
        state.headers_sent = true;
        state.code = 200;
        state.content_length = Some(5);
        state.head_sent = 40;
        state.body_sent = 5;
        // Its Content-Length met, but over FastCGI that is not the end yet.
        state.mark_answered();
        assert!(told.0.lock().is_empty(), "not before END_REQUEST");
        state.mark_ended_whole(45);
        state.mark_ended_whole(45);
        assert_eq!(*told.0.lock(), vec![(3, 200, 45)], "once, after it");
        // Nothing sent by the app (a refusal before its head): nothing to mark.
        let told = Arc::new(Told::default());
        let mut state = State::new(Box::new(EndsAtFinish), false);
        state.monitor = Some((told.clone(), 0));
        state.mark_ended_whole(0);
        assert!(told.0.lock().is_empty());
    }

    #[test]
    fn a_state_held_by_a_detached_thread_is_waited_for_with_the_gil_released() {
        // Guard for `st`'s slow path: one thread holds the state while it writes with
        // the GIL released and needs the GIL back to let go; another thread that wants
        // the state meanwhile must release the GIL while it waits, or neither moves.
        super::super::interpreter::start_for_tests();
        let shared = Python::attach(|py| responder(py).unbind());
        let shared = Arc::new(shared);
        let (locked_tx, locked_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let holder = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                Python::attach(|py| {
                    let r = shared.bind(py);
                    let mut me = st(r);
                    me.called = true;
                    locked_tx.send(()).unwrap();
                    // Writing with the GIL released, until the other thread waits.
                    py.detach(move || go_rx.recv().unwrap());
                    // Back with the GIL (the waiter must have released it), then unlocked.
                    me.code = 299;
                })
            })
        };
        locked_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let waiter = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                Python::attach(|py| {
                    let r = shared.bind(py);
                    assert!(r.get().state.is_locked(), "the holder has the state");
                    // The holder resumes once this thread is in the lock's wait.
                    go_tx.send(()).unwrap();
                    let me = st(r);
                    done_tx.send((me.called, me.code)).unwrap();
                })
            })
        };
        // A hang guard, not a timing: the two deadlock without the GIL released.
        let seen = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the waiter got the state");
        assert_eq!(seen, (true, 299), "the waiter sees the holder's changes");
        holder.join().unwrap();
        waiter.join().unwrap();
        Python::attach(|py| {
            let r = shared.bind(py);
            assert!(
                !r.get().state.is_locked(),
                "unlocked once, by the waiter's guard"
            );
            drop(st(r));
        });
    }
}
