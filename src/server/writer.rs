//! A per-Python-thread writer for streamed responses (issue 9 Part B, PEP 3333's
//! "transmission continues while the app produces the next block"): the Python thread
//! copies a chunk into a bounded queue and goes back to the app at once; this thread
//! sends everything queued in one send. Chunks the app yields while a send is in flight
//! therefore leave together, and nothing is held back: the writer sends as soon as
//! anything is queued. It is an OS thread of its own (never a tokio thread) and never
//! touches Python.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The most bytes queued at once; a Python thread that would go past it waits (with the
/// GIL released) until the writer has sent some, so a long stream's memory stays bounded.
pub const QUEUE_LIMIT: usize = 256 * 1024;

/// How often an idle writer checks whether its thread is gone.
const IDLE_CHECK: Duration = Duration::from_secs(10);

/// Capacity a drained buffer may keep for the next stream.
const KEEP: usize = 64 * 1024;

/// Where the writer sends a batch for one response: all of it, waiting while the front
/// server does not read, up to the write timeout per wait (the sink's send; given by
/// the sink, so this module knows nothing of sockets or protocols).
pub type Target = Arc<dyn Fn(&[u8]) -> io::Result<()> + Send + Sync>;

struct Inner {
    /// Bytes queued, in order, not yet taken by the writer.
    queued: Vec<u8>,
    /// The connection of the response being written (`None` between responses).
    target: Option<Target>,
    /// The writer is sending what it took.
    busy: bool,
    /// The first write error of this response: the client is gone (or stopped reading).
    error: Option<io::Error>,
    /// Bytes the writer sent for this response.
    sent: u64,
    /// A response is using this writer: another one (an app thread writing to two
    /// responses at once) writes directly instead of sharing the queue.
    active: bool,
    /// Which response the queue belongs to: a send of an abandoned response that ends
    /// late must not count towards (or fail) the next one.
    job: u64,
    /// Who sleeps on a condvar: notified only then (a notify is a futex call).
    writer_waiting: bool,
    producer_waiting: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    /// The writer waits here for bytes.
    work: Condvar,
    /// The Python thread waits here for room or for everything to be sent.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// This Python thread's writer, started with its first long stream.
    static WRITER: std::cell::OnceCell<Arc<Shared>> = const { std::cell::OnceCell::new() };
}

/// One response written through the calling thread's writer.
pub struct Stream {
    shared: Arc<Shared>,
}

impl Stream {
    /// Starts writing a response to `target` through this thread's writer (started on
    /// first use). `None` if the thread could not be started: write directly then.
    pub fn start(target: Target) -> Option<Stream> {
        let shared = WRITER.with(|w| {
            if let Some(s) = w.get() {
                return Some(s.clone());
            }
            let shared = Arc::new(Shared {
                inner: Mutex::new(Inner {
                    queued: Vec::new(),
                    target: None,
                    busy: false,
                    error: None,
                    sent: 0,
                    job: 0,
                    active: false,
                    writer_waiting: false,
                    producer_waiting: false,
                }),
                work: Condvar::new(),
                room: Condvar::new(),
            });
            let theirs = shared.clone();
            let name = format!(
                "{}-w",
                std::thread::current().name().unwrap_or("postern")
            );
            match std::thread::Builder::new()
                .name(name)
                .stack_size(64 * 1024)
                .spawn(move || run(theirs))
            {
                Ok(_) => {
                    let _ = w.set(shared.clone());
                    Some(shared)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a response writer thread; writing directly");
                    None
                }
            }
        })?;
        {
            let mut g = shared.lock();
            if g.active {
                return None;
            }
            g.active = true;
            g.queued.clear();
            g.target = Some(target);
            g.error = None;
            g.sent = 0;
            g.job += 1;
        }
        Some(Stream { shared })
    }

    /// Queues `data` if there is room now; never waits. `Ok(false)`: no room (call
    /// [`Stream::push`] with the GIL released). An error: an earlier send failed.
    pub fn try_push(&self, data: &[u8]) -> io::Result<bool> {
        self.try_push_with(data.len(), |q| q.extend_from_slice(data))
    }

    /// Like [`Stream::try_push`], with `put` appending about `len` bytes (framed).
    pub fn try_push_with(&self, len: usize, put: impl FnOnce(&mut Vec<u8>)) -> io::Result<bool> {
        let mut g = self.shared.lock();
        if let Some(e) = &g.error {
            return Err(copy(e));
        }
        if !g.queued.is_empty() && g.queued.len() + len > QUEUE_LIMIT {
            return Ok(false);
        }
        self.append(&mut g, put);
        Ok(true)
    }

    /// Queues `data`, waiting for room (backpressure) while the queue is full.
    pub fn push(&self, data: &[u8]) -> io::Result<()> {
        self.push_with(data.len(), |q| q.extend_from_slice(data))
    }

    /// Like [`Stream::push`], with `put` appending about `len` bytes (framed).
    pub fn push_with(&self, len: usize, put: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = &g.error {
                return Err(copy(e));
            }
            if g.queued.is_empty() || g.queued.len() + len <= QUEUE_LIMIT {
                self.append(&mut g, put);
                return Ok(());
            }
            g = self.wait(g);
        }
    }

    fn append(&self, g: &mut Inner, put: impl FnOnce(&mut Vec<u8>)) {
        put(&mut g.queued);
        if g.writer_waiting {
            g.writer_waiting = false;
            self.shared.work.notify_one();
        }
    }

    fn wait<'a>(&'a self, mut g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        g.producer_waiting = true;
        let mut g = self.shared.room.wait(g).unwrap_or_else(|e| e.into_inner());
        g.producer_waiting = false;
        g
    }

    /// Waits until everything queued is sent; returns the bytes sent so far for this
    /// response, or the first write error.
    pub fn drain(&self) -> (u64, io::Result<()>) {
        let mut g = self.shared.lock();
        while g.error.is_none() && (g.busy || !g.queued.is_empty()) {
            g = self.wait(g);
        }
        let sent = std::mem::take(&mut g.sent);
        match &g.error {
            Some(e) => (sent, Err(copy(e))),
            None => (sent, Ok(())),
        }
    }
}

impl Drop for Stream {
    /// The response is over (or abandoned): nothing more of it is sent, and the
    /// writer lets go of the connection once its send in flight ends.
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.queued.clear();
        g.target = None;
        g.active = false;
        if g.queued.capacity() > KEEP {
            g.queued = Vec::new();
        }
    }
}

/// An error recorded once and reported to every later write (io::Error is not Clone).
fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn run(shared: Arc<Shared>) {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let (target, job) = {
            let mut g = shared.lock();
            while g.queued.is_empty() {
                // Only this thread holds the writer: the thread it wrote for has
                // exited (an app's own thread that called write()). Nobody can reach
                // it any more.
                if Arc::strong_count(&shared) == 1 {
                    return;
                }
                g.writer_waiting = true;
                let (woken, _) = shared
                    .work
                    .wait_timeout(g, IDLE_CHECK)
                    .unwrap_or_else(|e| e.into_inner());
                g = woken;
            }
            g.writer_waiting = false;
            std::mem::swap(&mut g.queued, &mut out);
            g.busy = true;
            (g.target.clone(), g.job)
        };
        let r = match &target {
            Some(send) => send(&out),
            None => Ok(()),
        };
        drop(target);
        let n = out.len() as u64;
        out.clear();
        if out.capacity() > KEEP {
            out = Vec::new();
        }
        let mut g = shared.lock();
        g.busy = false;
        match r {
            _ if g.job != job => {}
            Ok(()) => g.sent += n,
            Err(e) => {
                g.queued.clear();
                g.error.get_or_insert(e);
            }
        }
        if g.producer_waiting {
            shared.room.notify_one();
        }
    }
}
