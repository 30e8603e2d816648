//! A per-Python-thread writer for streamed responses (issue 9 Part B, PEP 3333's
//! "transmission continues while the app produces the next block"): the Python thread
//! copies a chunk into a bounded queue and goes back to the app at once; this thread
//! sends everything queued in one send. Chunks the app yields while a send is in flight
//! therefore leave together, and nothing is held back: the writer sends as soon as
//! anything is queued. It is an OS thread of its own (never a tokio thread) and never
//! touches Python.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
pub type Target = Arc<dyn Fn(&[u8]) -> Result<(), Failed> + Send + Sync>;

/// A batch's send that failed: `counted` is what had left of it, counted as the sink
/// counts (its protocol's framing left out), so that the response's figures name
/// what the front server was sent, not only the batches that went whole.
pub struct Failed {
    pub counted: u64,
    pub error: io::Error,
}

struct Inner {
    /// Bytes queued, in order, not yet taken by the writer.
    queued: Vec<u8>,
    /// The connection of the response being written (`None` between responses).
    target: Option<Target>,
    /// The writer is sending what it took.
    busy: bool,
    /// The first write error of this response: the client is gone (or stopped reading).
    error: Option<io::Error>,
    /// Bytes the writer sent for this response (as the sink counts them: a FastCGI
    /// chunk's body, not its record framing).
    sent: u64,
    /// What `queued` counts for `sent` once it is sent.
    queued_count: u64,
    /// The thread this writer serves has exited: the writer ends once no response
    /// uses it (instead of at its next idle check).
    owner_gone: bool,
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

/// A thread's handle on its writer; dropped when the thread exits, which tells the
/// writer to end (an app's own thread that called `write()` may be one of many).
struct Owner(std::cell::OnceCell<Arc<Shared>>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(shared) = self.0.get() {
            let mut g = shared.lock();
            g.owner_gone = true;
            if g.writer_waiting {
                g.writer_waiting = false;
                shared.work.notify_one();
            }
        }
    }
}

thread_local! {
    /// This Python thread's writer, started with its first long stream.
    static WRITER: Owner = const { Owner(std::cell::OnceCell::new()) };
}

/// A failure to start a writer thread is logged once (it would otherwise be logged at
/// every write of every stream while threads are exhausted).
static SPAWN_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One response written through the calling thread's writer.
pub struct Stream {
    shared: Arc<Shared>,
}

impl Stream {
    /// Starts writing a response to `target` through this thread's writer (started on
    /// first use). `None` if the thread could not be started: write directly then.
    pub fn start(target: Target) -> Option<Stream> {
        let shared = WRITER.with(|w| {
            let w = &w.0;
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
                    queued_count: 0,
                    owner_gone: false,
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
                    if SPAWN_FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        return None;
                    }
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
            g.queued_count = 0;
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
        self.try_push_with(data.len(), data.len(), |q| q.extend_from_slice(data))
    }

    /// Like [`Stream::try_push`], with `put` appending about `len` bytes (framed) that
    /// count as `count` bytes sent once the writer has sent them.
    pub fn try_push_with(
        &self,
        len: usize,
        count: usize,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<bool> {
        let mut g = self.shared.lock();
        if let Some(e) = &g.error {
            return Err(copy(e));
        }
        if !g.queued.is_empty() && g.queued.len() + len > QUEUE_LIMIT {
            return Ok(false);
        }
        self.append(&mut g, count, put);
        Ok(true)
    }

    /// Queues `data`, waiting for room (backpressure) while the queue is full.
    pub fn push(&self, data: &[u8]) -> io::Result<()> {
        self.push_with(data.len(), data.len(), |q| q.extend_from_slice(data))
    }

    /// Like [`Stream::push`], with `put` appending about `len` bytes (framed) that
    /// count as `count` bytes sent.
    pub fn push_with(
        &self,
        len: usize,
        count: usize,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> io::Result<()> {
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = &g.error {
                return Err(copy(e));
            }
            if g.queued.is_empty() || g.queued.len() + len <= QUEUE_LIMIT {
                self.append(&mut g, count, put);
                return Ok(());
            }
            g = self.wait(g);
        }
    }

    fn append(&self, g: &mut Inner, count: usize, put: impl FnOnce(&mut Vec<u8>)) {
        put(&mut g.queued);
        g.queued_count += count as u64;
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

    /// The response is cut: what is queued is dropped, never sent.
    pub fn drop_queued(&self) {
        let mut g = self.shared.lock();
        g.queued.clear();
        g.queued_count = 0;
    }

    /// The bytes sent for this response since the last `drain`, once
    /// the send in flight (if any) has returned, or `max` has passed: for a response
    /// cut short, whose cut stops that send.
    pub fn settle(&self, max: Duration) -> u64 {
        let deadline = Instant::now() + max;
        let mut g = self.shared.lock();
        g.queued.clear();
        g.queued_count = 0;
        while g.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g.producer_waiting = true;
            let (woken, _) = self
                .shared
                .room
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner());
            g = woken;
            g.producer_waiting = false;
        }
        std::mem::take(&mut g.sent)
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
        g.queued_count = 0;
        g.target = None;
        g.active = false;
        if g.owner_gone && g.writer_waiting {
            // Its thread has exited: the writer may end now.
            g.writer_waiting = false;
            self.shared.work.notify_one();
        }
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
        let (target, job, count) = {
            let mut g = shared.lock();
            while g.queued.is_empty() {
                // The thread it wrote for has exited (an app's own thread that called
                // write()) and no response uses it: nobody can reach it any more.
                if (g.owner_gone && !g.active) || Arc::strong_count(&shared) == 1 {
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
            (g.target.clone(), g.job, std::mem::take(&mut g.queued_count))
        };
        let r = match &target {
            Some(send) => send(&out),
            None => Ok(()),
        };
        drop(target);
        out.clear();
        if out.capacity() > KEEP {
            out = Vec::new();
        }
        let mut g = shared.lock();
        g.busy = false;
        match r {
            _ if g.job != job => {}
            Ok(()) => g.sent += count,
            Err(Failed { counted, error }) => {
                g.sent += counted.min(count);
                g.queued.clear();
                g.queued_count = 0;
                g.error.get_or_insert(error);
            }
        }
        if g.producer_waiting {
            shared.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // regression: a batch whose send failed part way counted nothing, so the access
    // line and postern_response_bytes_total left out what had reached the front server.
    #[test]
    fn a_batch_that_fails_part_way_counts_what_left() {
        let calls = Arc::new(Mutex::new(0u32));
        let seen = Arc::clone(&calls);
        let target: Target = Arc::new(move |b: &[u8]| {
            let mut n = seen.lock().unwrap();
            *n += 1;
            if *n == 1 {
                return Ok(());
            }
            Err(Failed {
                counted: (b.len() / 2) as u64,
                error: io::Error::new(io::ErrorKind::BrokenPipe, "gone"),
            })
        });
        let s = Stream::start(target).expect("a writer");
        s.push(b"0123456789").unwrap();
        let (sent, r) = s.drain();
        assert_eq!((sent, r.is_ok()), (10, true));
        s.push(b"abcdefgh").unwrap();
        let (sent, r) = s.drain();
        assert_eq!(sent, 4, "half of the failed batch left");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
