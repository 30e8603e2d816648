//! Response bytes waiting for the socket, written from the loop thread with no thread
//! per wait (a response whose sink has a socket of its own: uwsgi and SCGI; FastCGI
//! writes on the io executor): [`Out`] keeps them in order, and the loop's `add_writer` says
//! when the socket has room again. Also the loop's wake-up for request bodies that
//! arrive while the app runs ([`BodyWakes`]): the server layer's thread only pushes an
//! id and writes an eventfd, never the GIL.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::wsgi::Sink;

/// Requests whose sink learns on another thread that the front server went away
/// (FastCGI: the server layer reads the connection): their ids, and an eventfd the
/// loop watches. The other thread only pushes an id and writes the eventfd (never
/// the GIL).
pub struct GoneQueue {
    pub fd: std::os::fd::OwnedFd,
    ids: Mutex<Vec<u64>>,
}

impl GoneQueue {
    pub fn new() -> std::io::Result<Arc<GoneQueue>> {
        use rustix::event::EventfdFlags;
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Arc::new(GoneQueue {
            fd,
            ids: Mutex::new(Vec::new()),
        }))
    }

    pub fn push(&self, id: u64) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// The ids pushed since the last call (the eventfd was readable).
    pub fn take(&self) -> Vec<u64> {
        let mut n = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut n);
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A chunk at least this large is kept as the app's own `bytes` until it is sent,
/// never copied; smaller ones are copied into one buffer, so the chunks an app sends
/// while the socket is busy leave together in one send.
pub const KEEP_OBJECT: usize = 64 * 1024;

/// Past this many bytes waiting, `await send(...)` waits (backpressure) until the
/// socket has taken all but [`LOW`] of them.
pub const HIGH: usize = 256 * 1024;

/// See [`HIGH`].
pub const LOW: usize = 64 * 1024;

/// The most bytes of earlier `send()`s that may still wait for the front server when
/// the app sends more. Only an app that did not wait for them gets past [`HIGH`] (it
/// cancelled them: `asyncio.wait_for(send(...), t)` in a loop); they still go out, in
/// order, but past this the response is cut off: else a reader that reads nothing
/// made the worker hold all the app sent.
pub const MAX_UNAWAITED: usize = 4 * HIGH;

/// The most one buffer of copied chunks holds.
const PIECE: usize = 16 * 1024;

/// Slices per send: well under IOV_MAX (1024).
const IOVS: usize = 64;

/// A `http.response.pathsend` file that ended before the length announced for it:
/// it shrank (was truncated or rewritten) while it was sent. The server's fault, not
/// the client's: the response is cut off, and the log says why.
#[derive(Debug)]
pub struct FileShrank {
    pub path: std::path::PathBuf,
    /// Bytes of the file sent, when the writer knows (the loop's writes do).
    pub sent: Option<u64>,
    pub expected: u64,
    /// The file's length when the send found its end.
    pub now: u64,
}

impl std::fmt::Display for FileShrank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} shrank to {} bytes while it was being sent ({} announced)",
            self.path.display(),
            self.now,
            self.expected
        )
    }
}

impl std::error::Error for FileShrank {}

/// A read of a `http.response.pathsend` file sent to its end ([`Piece::Stream`])
/// failed: an error of the file's (`/proc/self/mem`'s EIO), or it would block (a
/// `/proc/kmsg` drained: such files are read with `O_NONBLOCK`, as the loop thread
/// must never wait on one). The server's fault, as [`FileShrank`] is: the response is
/// cut off.
#[derive(Debug)]
pub struct FileReadFailed {
    pub path: std::path::PathBuf,
    /// Bytes of the file read before the failed read.
    pub read: u64,
    pub error: io::Error,
}

impl std::fmt::Display for FileReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reading {} failed at byte {}: {}",
            self.path.display(),
            self.read,
            self.error
        )
    }
}

impl std::error::Error for FileReadFailed {}

/// The path of an open file as the kernel knows it (only on a rare failure).
fn path_of(file: &std::fs::File) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or_else(|_| "(the file)".into())
}

/// `e`, from sending the first `expected` bytes of `file` (`sent` of them gone, if
/// known), as a [`FileShrank`] when the file ended early (the sinks' `UnexpectedEof`;
/// a socket's failures are other kinds).
pub fn file_error(
    e: io::Error,
    file: &std::fs::File,
    sent: Option<u64>,
    expected: u64,
) -> io::Error {
    if e.kind() != io::ErrorKind::UnexpectedEof {
        return e;
    }
    let path = path_of(file);
    let now = file.metadata().map_or(0, |m| m.len());
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        FileShrank {
            path,
            sent,
            expected,
            now,
        },
    )
}

/// Logs why writing a response failed (called in the request's span). True when the
/// fault is the server's (a pathsend file that shrank or could not be read: warned,
/// and the response is to be cut off as incomplete), false when the front server went
/// away (debug: an ordinary client abort).
pub fn write_failed(e: &io::Error) -> bool {
    if let Some(f) = e.get_ref().and_then(|i| i.downcast_ref::<FileReadFailed>()) {
        tracing::warn!(
            path = %f.path.display(),
            read = f.read,
            error = %f.error,
            "http.response.pathsend: reading the file failed; the response is cut off"
        );
        return true;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<FileShrank>()) {
        Some(f) => {
            tracing::warn!(
                path = %f.path.display(),
                sent = f.sent,
                expected = f.expected,
                file_now = f.now,
                "http.response.pathsend: the file shrank while it was being sent; the response is cut off"
            );
            true
        }
        None => {
            // A stall is told by the error's kind ([`super::http`]'s `gone_by`).
            let _stalled = crate::logging::write_failed(e);
            false
        }
    }
}

/// One part of a response, in order.
enum Piece {
    /// Bytes of postern's (a head) and copied small chunks.
    Owned(Vec<u8>),
    /// The app's `bytes`, its first `len` bytes (less when a Content-Length cut it).
    Object(Py<PyBytes>, usize),
    /// A file (`http.response.pathsend`), its next offset and its end.
    File(std::fs::File, u64, u64),
    /// A file read to its end ([`Out::push_stream`]): the bytes read so far, and the
    /// most to read (the app's Content-Length).
    Stream(std::fs::File, u64, Option<u64>),
}

/// What [`Out::write`] reads of a [`Piece::Stream`] file at a time, and what
/// [`send_stream`] does: such files are small (a `/proc` or `/sys` file is a page or
/// a few).
pub const STREAM_BLOCK: usize = 64 * 1024;

/// Reads the next block of a file sent to its end: `Ok(None)` at its end, or `Err`
/// (a [`FileShrank`]) when it ended before `limit`, what the app's Content-Length
/// announced, or (a [`FileReadFailed`]) when the read failed or would block.
pub fn read_block(f: &std::fs::File, read: u64, limit: Option<u64>) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let want = limit.map_or(STREAM_BLOCK, |l| {
        usize::try_from(l.saturating_sub(read)).map_or(STREAM_BLOCK, |n| n.min(STREAM_BLOCK))
    });
    if want == 0 {
        return Ok(None);
    }
    let mut buf = vec![0; want];
    let n = loop {
        match (&mut &*f).read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                let path = path_of(f);
                return Err(io::Error::other(FileReadFailed { path, read, error }));
            }
            Ok(n) => break n,
        }
    };
    if n == 0 {
        return match limit {
            Some(l) if read < l => Err(file_error(
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended before its Content-Length",
                ),
                f,
                Some(read),
                l,
            )),
            _ => Ok(None),
        };
    }
    buf.truncate(n);
    Ok(Some(buf))
}

/// Sends `f` from byte `read` to its end, or to byte `limit`, a block at a time (the
/// executor's write of a [`Piece::Stream`] file).
pub fn send_stream(
    sink: &mut dyn Sink,
    f: &std::fs::File,
    mut read: u64,
    limit: Option<u64>,
) -> io::Result<()> {
    while let Some(block) = read_block(f, read, limit)? {
        sink.write_all(&block)?;
        read += block.len() as u64;
    }
    Ok(())
}

/// Slices a send puts on the stack; more (up to [`IOVS`]) go in a `Vec`.
const FEW_IOVS: usize = 8;

/// A buffer at most this large is kept for the next response ([`spare_buffer`]).
const SPARE_MAX: usize = 4 * 1024;

thread_local! {
    /// The buffer of the last small piece sent, and the piece queue of the last response
    /// dropped, on this (the loop's) thread: the next response takes them instead of a
    /// malloc and free of each (its head is written into the buffer).
    static SPARE_BUF: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
    static SPARE_PIECES: Cell<Option<VecDeque<Piece>>> = const { Cell::new(None) };
}

/// An empty buffer, the one [`Out`] kept ([`SPARE_BUF`]) if there is one.
pub fn spare_buffer() -> Vec<u8> {
    let mut v = SPARE_BUF
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    v.clear();
    v
}

/// Keeps a sent piece's buffer for [`spare_buffer`] (a large one is freed).
fn keep_buffer(v: Vec<u8>) {
    if v.capacity() > 0 && v.capacity() <= SPARE_MAX {
        let _ = SPARE_BUF.try_with(|s| s.set(Some(v)));
    }
}

/// What a response still has to write, in order.
#[derive(Default)]
pub struct Out {
    pieces: VecDeque<Piece>,
    /// Bytes of the front piece already sent.
    front_sent: usize,
    /// Bytes in memory waiting (files not counted: they are not in memory).
    queued: usize,
    /// Bytes the socket has taken, files included (progress for `--read-timeout`).
    sent: u64,
    /// Bytes ever pushed, files included: where each `send()`'s message ends, so
    /// concurrent sends can each wait for their own.
    pushed: u64,
}

impl Drop for Out {
    fn drop(&mut self) {
        let mut pieces = std::mem::take(&mut self.pieces);
        pieces.clear();
        if pieces.capacity() > 0 && pieces.capacity() <= FEW_IOVS {
            let _ = SPARE_PIECES.try_with(|s| s.set(Some(pieces)));
        }
    }
}

impl Out {
    /// An empty queue, in the storage the last one dropped on this thread left.
    pub fn new() -> Out {
        Out {
            pieces: SPARE_PIECES
                .try_with(Cell::take)
                .ok()
                .flatten()
                .unwrap_or_default(),
            ..Out::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Bytes in memory waiting for the socket.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes the socket has taken so far, files included.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes pushed so far, files included (what was sent, and what waits).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Copies `data` after what waits, into buffers of at most [`PIECE`] bytes (the
    /// last one's room first): a buffer is freed once sent, and none grows by
    /// doubling past that, so a stalled response holds about what is queued
    /// ([`HIGH`]), not twice it plus what already left.
    pub fn push_copy(&mut self, mut data: &[u8]) {
        self.queued += data.len();
        self.pushed += data.len() as u64;
        while !data.is_empty() {
            if let Some(Piece::Owned(v)) = self.pieces.back_mut() {
                if v.len() < PIECE {
                    let take = (PIECE - v.len()).min(data.len());
                    let need = v.len() + take;
                    if v.capacity() < need {
                        // Doubling as a Vec does, but never past PIECE.
                        let cap = need.next_power_of_two().min(PIECE).max(need);
                        v.reserve_exact(cap - v.len());
                    }
                    v.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    continue;
                }
            }
            let take = data.len().min(PIECE);
            let mut v = Vec::with_capacity(take.next_power_of_two().min(PIECE).max(take));
            v.extend_from_slice(&data[..take]);
            self.pieces.push_back(Piece::Owned(v));
            data = &data[take..];
        }
    }

    pub fn push_vec(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if data.len() < PIECE && matches!(self.pieces.back(), Some(Piece::Owned(_))) {
            return self.push_copy(&data);
        }
        self.queued += data.len();
        self.pushed += data.len() as u64;
        self.pieces.push_back(Piece::Owned(data));
    }

    /// Keeps the first `len` bytes of the app's `bytes` to send, without a copy.
    pub fn push_object(&mut self, b: Py<PyBytes>, len: usize) {
        if len == 0 {
            return;
        }
        self.queued += len;
        self.pushed += len as u64;
        self.pieces.push_back(Piece::Object(b, len));
    }

    pub fn push_file(&mut self, f: std::fs::File, len: u64) {
        if len > 0 {
            self.pushed += len;
            self.pieces.push_back(Piece::File(f, 0, len));
        }
    }

    /// A file whose length is not known (its size reads 0: `/proc` and some FUSE
    /// files make their content when read), read to its end, or to `limit` bytes, a
    /// block at a time as the socket takes it, on the loop thread (those reads take no
    /// disk; the file is `O_NONBLOCK`: one that would block fails the response), from
    /// byte `read` (the first block went with the head).
    pub fn push_stream(&mut self, f: std::fs::File, read: u64, limit: Option<u64>) {
        self.pieces.push_back(Piece::Stream(f, read, limit));
    }

    /// Drops what waits (the response is cut).
    pub fn clear(&mut self) {
        self.pieces.clear();
        self.front_sent = 0;
        self.queued = 0;
    }

    /// Writes what the socket takes now, in order. `Ok(true)`: all of it is out.
    pub fn write(&mut self, py: Python<'_>, sink: &mut dyn Sink) -> io::Result<bool> {
        loop {
            match self.pieces.front_mut() {
                None => return Ok(true),
                Some(Piece::File(f, off, end)) => {
                    let n = sink
                        .try_send_file(f, *off, *end - *off)
                        .map_err(|e| file_error(e, f, Some(*off), *end))?;
                    if n == 0 {
                        return Ok(false);
                    }
                    *off += n as u64;
                    self.sent += n as u64;
                    if *off >= *end {
                        self.pieces.pop_front();
                    }
                }
                Some(Piece::Stream(f, read, limit)) => match read_block(f, *read, *limit)? {
                    // The block goes before the rest of the file, as a head does.
                    Some(block) => {
                        *read += block.len() as u64;
                        self.queued += block.len();
                        self.pushed += block.len() as u64;
                        self.pieces.push_front(Piece::Owned(block));
                    }
                    None => {
                        self.pieces.pop_front();
                    }
                },
                Some(_) => {
                    // On the stack when few (a response's usual one or two pieces).
                    let count = self.pieces.len().min(IOVS);
                    let mut few = [IoSlice::new(&[]); FEW_IOVS];
                    let mut many = Vec::new();
                    let iov: &mut [IoSlice<'_>] = if count <= FEW_IOVS {
                        &mut few
                    } else {
                        many.resize(count, IoSlice::new(&[]));
                        &mut many
                    };
                    let mut total = 0;
                    let mut k = 0;
                    for (i, p) in self.pieces.iter().enumerate().take(count) {
                        let skip = if i == 0 { self.front_sent } else { 0 };
                        let b: &[u8] = match p {
                            Piece::Owned(v) => v,
                            Piece::Object(o, len) => &o.as_bytes(py)[..*len],
                            Piece::File(..) | Piece::Stream(..) => break,
                        };
                        total += b.len() - skip;
                        iov[k] = IoSlice::new(&b[skip..]);
                        k += 1;
                    }
                    let n = sink.try_write_vectored(&iov[..k])?;
                    self.advance(n);
                    if n < total {
                        // The socket is full (or took part): wait for room.
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// `n` bytes of the memory pieces at the front were sent.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        self.sent += n as u64;
        while n > 0 {
            let len = match self.pieces.front() {
                Some(Piece::Owned(v)) => v.len(),
                Some(Piece::Object(_, len)) => *len,
                _ => return,
            };
            let left = len - self.front_sent;
            if n < left {
                self.front_sent += n;
                return;
            }
            n -= left;
            self.front_sent = 0;
            if let Some(Piece::Owned(v)) = self.pieces.pop_front() {
                keep_buffer(v);
            }
        }
    }
}

/// The loop's methods for waiting on sockets and for later calls, looked up once, and
/// the body wake-ups: one per loop thread.
pub struct LoopIo {
    pub add_writer: Py<PyAny>,
    pub remove_writer: Py<PyAny>,
    pub call_soon: Py<PyAny>,
    pub call_later: Py<PyAny>,
    /// Bodies that have more to take: the ids the server layer pushed.
    pub bodies: Arc<GoneQueue>,
    /// The requests waiting for more of their body, by id: what to call then.
    pub body_waiting: RefCell<HashMap<u64, Py<PyAny>>>,
    pub next_id: Cell<u64>,
}

thread_local! {
    static LOOP_IO: OnceCell<Rc<LoopIo>> = const { OnceCell::new() };
}

/// This loop thread's [`LoopIo`], made on first use (the eventfd joins the loop then).
pub fn loop_io(event_loop: &Bound<'_, PyAny>) -> PyResult<Rc<LoopIo>> {
    if let Some(io) = LOOP_IO.with(|c| c.get().cloned()) {
        return Ok(io);
    }
    let py = event_loop.py();
    let get = |name: &str| -> PyResult<Py<PyAny>> { Ok(event_loop.getattr(name)?.unbind()) };
    let io = Rc::new(LoopIo {
        add_writer: get("add_writer")?,
        remove_writer: get("remove_writer")?,
        call_soon: get("call_soon")?,
        call_later: get("call_later")?,
        bodies: GoneQueue::new()?,
        body_waiting: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
    });
    event_loop.call_method1(
        "add_reader",
        (io.bodies.fd.as_raw_fd(), Bound::new(py, BodyWakes)?),
    )?;
    LOOP_IO.with(|c| {
        let _ = c.set(Rc::clone(&io));
    });
    Ok(io)
}

/// The loop's reader of the body eventfd: hands each woken request its chunks.
#[pyclass(module = "postern", name = "BodyWakes", frozen)]
struct BodyWakes;

#[pymethods]
impl BodyWakes {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(io) = LOOP_IO.with(|c| c.get().cloned()) else {
            return Ok(());
        };
        for id in io.bodies.take() {
            let woken = io.body_waiting.borrow().get(&id).map(|e| e.clone_ref(py));
            if let Some(woken) = woken {
                woken.bind(py).call0()?;
            }
        }
        Ok(())
    }
}
