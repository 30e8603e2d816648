//! The requests the Python threads are running, for a stop that cuts them off
//! (`--graceful-timeout`, a second signal, SIGQUIT). A thread stuck in the app when
//! the worker exits never writes its request's access line, and over uwsgi or SCGI
//! its front server may see a clean end after part of the body: the worker's I/O
//! thread names each such request (id, method, path, remote address) with how far
//! its response got, and writes its access line marked incomplete, as the ASGI path
//! does ([`cut_off`]).
//!
//! Per request: the head is moved into this thread's slot while the app runs and
//! moved back after (no copy), the id is copied (the span is not: the WARN carries its
//! own fields, so it names the request at `--log-level warn` too), and each body write
//! stores two numbers.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::codec::{Head, Protocol};
use crate::logging::{RequestId, Untrusted};

/// The request a Python thread runs.
struct Running {
    head: Head,
    id: RequestId,
    protocol: Protocol,
    /// When the app was called.
    started: Instant,
}

/// No request: `running` is its thread's alone.
const IDLE: u8 = 0;
/// The app runs `running`: a stop may take it to [`NAMING`].
const RUNNING: u8 = 1;
/// A stop reads `running` (its thread's `end` waits for [`NAMED`]).
const NAMING: u8 = 2;
/// A stop named `running`: its thread writes no access line of its own.
const NAMED: u8 = 3;

/// One Python thread's request, if any. Kept by the thread ([`super::environ::Keys`]
/// and its responder), so that a request costs no lookup: `begin` and `end` are a
/// store and a compare-exchange, each write two relaxed stores.
pub(super) struct Slot {
    state: AtomicU8,
    /// Written by its thread only in [`IDLE`] or [`NAMED`]; read by a stop only in
    /// [`NAMING`], which it enters from [`RUNNING`] (acquire) and leaves (release).
    running: UnsafeCell<Option<Running>>,
    /// The response's status once its head went out (0: not yet).
    status: AtomicU32,
    /// The body bytes written so far.
    body: AtomicU64,
    /// The response went out whole (its Content-Length met, or no body; else once the
    /// sink ended it: a clean close, FastCGI's END_REQUEST): a stop that cuts the
    /// request off after it (in its iterable's `close()`, say) cut nothing the client
    /// gets.
    answered: AtomicBool,
    /// Its thread's index in the pool (its scoreboard line), for the metrics of a
    /// request a stop cuts off.
    thread: AtomicUsize,
}

// SAFETY: `running` is reached only as `state` says (see its field), which hands it
// from one thread to the other with release/acquire.
unsafe impl Sync for Slot {}

/// Every Python thread's slot (one pool per process).
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

fn empty_head() -> Head {
    Head {
        buf: bytes::Bytes::new(),
        vars: Vec::new(),
        modifier30: false,
        content_length: 0,
    }
}

impl Slot {
    /// A new Python thread's slot, listed for [`cut_off`].
    pub(super) fn new() -> Arc<Slot> {
        let slot = Arc::new(Slot {
            state: AtomicU8::new(IDLE),
            running: UnsafeCell::new(None),
            status: AtomicU32::new(0),
            body: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            thread: AtomicUsize::new(0),
        });
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&slot));
        slot
    }

    /// The slot belongs to the pool's thread `i` (set once, as the thread starts).
    pub(super) fn set_thread(&self, i: usize) {
        self.thread.store(i, Ordering::Relaxed);
    }

    /// The Python thread this slot belongs to.
    pub(super) fn thread(&self) -> usize {
        self.thread.load(Ordering::Relaxed)
    }

    /// The app is about to run `head`'s request: the head moves into the slot until
    /// [`Slot::end`] gives it back.
    pub(super) fn begin(&self, head: &mut Head, id: &RequestId, protocol: Protocol) {
        if self.state.load(Ordering::Relaxed) != IDLE {
            // An earlier request's `end` never came (a panic the pool caught).
            self.abandon();
        }
        let head = std::mem::replace(head, empty_head());
        self.status.store(0, Ordering::Relaxed);
        self.body.store(0, Ordering::Relaxed);
        self.answered.store(false, Ordering::Relaxed);
        // SAFETY: IDLE (every `begin` is followed by `end` or `abandon` on this
        // thread): no stop reads it.
        unsafe {
            *self.running.get() = Some(Running {
                head,
                id: *id,
                protocol,
                started: Instant::now(),
            });
        }
        self.state.store(RUNNING, Ordering::Release);
    }

    /// How far the response got: its status (once its head is sent) and body bytes.
    pub(super) fn progress(&self, status: u16, body: u64) {
        self.status.store(u32::from(status), Ordering::Relaxed);
        self.body.store(body, Ordering::Relaxed);
    }

    /// The response went out whole (after the last [`Slot::progress`]).
    pub(super) fn answered(&self) {
        // Release: a stop that sees it sees the status and bytes stored before.
        self.answered.store(true, Ordering::Release);
    }

    /// Forgets the request [`Slot::begin`] recorded, whose `end` will not come (a panic
    /// between them, caught by the pool): the thread's next request would otherwise
    /// take its head back in its `end` (its access line naming the wrong request), and
    /// a stop would name it as running.
    /// True when a stop named it meanwhile (its access line written, counted).
    pub(super) fn abandon(&self) -> bool {
        self.end(&mut empty_head())
    }

    /// The app is done with the request [`Slot::begin`] recorded: its head comes back
    /// into `head`. True when a stop has named it already (its access line is written).
    pub(super) fn end(&self, head: &mut Head) -> bool {
        let named =
            match self
                .state
                .compare_exchange(RUNNING, IDLE, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => false,
                Err(IDLE) => return false,
                Err(_) => {
                    // A stop is naming it (a few microseconds): wait for it to finish.
                    while self.state.load(Ordering::Acquire) != NAMED {
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                    self.state.store(IDLE, Ordering::Relaxed);
                    true
                }
            };
        // SAFETY: IDLE now, by this thread (a stop's reads ended with its release of
        // NAMED, acquired above).
        if let Some(r) = unsafe { (*self.running.get()).take() } {
            *head = r.head;
        }
        named
    }
}

/// The ids of the requests answered `504 Gateway Timeout` at `--timeout` while their
/// app still ran (FastCGI: the server layer's late answer, just before the kill), for
/// their access lines; the last few only.
static ANSWERED_LATE: Mutex<Vec<RequestId>> = Mutex::new(Vec::new());
const ANSWERED_LATE_KEPT: usize = 64;

/// How much sooner than the app's call the FastCGI clock of a request answered late
/// may have started (it starts as the request is read whole).
const LATE_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The request `id` was answered 504 for `--timeout` while its app still runs: if the
/// kill cuts it off, its access line says so.
pub fn answered_late(id: RequestId) {
    let mut late = ANSWERED_LATE.lock().unwrap_or_else(|e| e.into_inner());
    if late.len() == ANSWERED_LATE_KEPT {
        late.remove(0);
    }
    late.push(id);
}

/// How a stop cuts off the requests the Python threads still run ([`cut_off`]).
pub struct Cut<'a> {
    /// What cut them off, for the WARN naming each; `None` at a `--timeout` kill,
    /// where the master named them already.
    pub why: Option<&'a str>,
    /// `--timeout`, if set: only a request that ran that long may have been answered
    /// 504 for it.
    pub timeout: Option<std::time::Duration>,
    /// At a `--timeout` kill, the Python threads (their pool index) whose request is
    /// past the limit, as the master saw them: by thread, not by request id, which a
    /// client may send twice.
    pub overdue: &'a [usize],
    /// Counts each in the request metrics, as its thread would have.
    pub monitor: Option<&'a dyn super::Monitor>,
}

/// Ends each request a Python thread still runs as the worker exits: names it (unless
/// the master did) with `cut.why` and how far its response got, writes its access line
/// and counts it in the request metrics, as its thread never will: status 502 when its
/// response had not started (what the front server answers for a connection closed
/// without one), 504 when postern answered that for `--timeout` (FastCGI). Returns how
/// many there were.
// regression (probe 379): requests killed by --timeout had no access line, and
// postern_requests_total left them out (requests cut at --graceful-timeout too).
pub fn cut_off(cut: &Cut<'_>) -> usize {
    let slots: Vec<Arc<Slot>> = SLOTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut named = 0;
    for s in slots {
        if s.state
            .compare_exchange(RUNNING, NAMING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: NAMING, entered from RUNNING with acquire: the thread's `begin`
        // wrote it before its release, and it waits for NAMED to touch it again.
        let Some(r) = (unsafe { (*s.running.get()).as_ref() }) else {
            s.state.store(NAMED, Ordering::Release);
            continue;
        };
        named += 1;
        // Sent whole: what is cut off is the app's work after its response. First (the
        // acquire): the status and bytes stored before it are then seen.
        let answered = s.answered.load(Ordering::Acquire);
        let status = u16::try_from(s.status.load(Ordering::Relaxed)).unwrap_or(0);
        let body = s.body.load(Ordering::Relaxed);
        let answered = answered && status != 0;
        let ran_ms = r.started.elapsed().as_millis() as u64;
        // Outside the request's span, which `--log-level warn` disables: the line names
        // the request itself (as the master's `name_cut_offs_for` does).
        let h = &r.head;
        let request_id = tracing::field::display(&r.id);
        let method = Untrusted(h.get(b"REQUEST_METHOD").unwrap_or(b"-"));
        let path = Untrusted(
            h.get(b"REQUEST_URI")
                .or_else(|| h.get(b"PATH_INFO"))
                .unwrap_or(b"-"),
        );
        let remote = Untrusted(h.get(b"REMOTE_ADDR").unwrap_or(b"-"));
        match cut.why {
            None => {}
            Some(why) if status == 0 => tracing::warn!(
                request_id,
                method = %method,
                path = %path,
                remote = %remote,
                ran_ms,
                "request cut off {why}: the app still ran it, and its response had not started (its front server gets an error)"
            ),
            Some(why) => {
                let what = if answered {
                    format!("request cut off {why} after its response was sent whole (the client has it): what the app still ran after it (its iterable's close(), say) did not finish")
                } else {
                    format!("request cut off {why}: the app still ran it; its head and {body} body bytes were sent, the rest never will be (the response is incomplete)")
                };
                tracing::warn!(
                    request_id,
                    method = %method,
                    path = %path,
                    remote = %remote,
                    ran_ms,
                    response_status = status,
                    body_bytes = body,
                    "{what}"
                )
            }
        }
        use crate::logging::Ending;
        // regression (review 387): matched by id alone, a request that shared a
        // client-chosen id with one past the limit was logged as answered 504.
        let thread = s.thread.load(Ordering::Relaxed);
        let past = cut.overdue.contains(&thread);
        // Answered late: a FastCGI request that ran --timeout (review 388: whatever
        // stop then cut it, a SIGQUIT in the moment before the kill too), with the
        // id of one answered; a uwsgi or younger one sharing a client's id is not.
        let id = r.id.as_str();
        let late = r.protocol == Protocol::FastCgi
            && cut
                .timeout
                .is_some_and(|t| r.started.elapsed() + LATE_MARGIN >= t)
            && ANSWERED_LATE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|l| l.as_str() == id);
        let (status, ending, end) = if late {
            (504, Ending::TimedOut, super::End::Complete(504))
        } else if answered {
            // regression (review 403): logged incomplete and counted cut off, while
            // the client had the whole response.
            (status, Ending::Complete, super::End::Complete(status))
        } else {
            let ending = match (past, status) {
                (true, 0) => Ending::TimedOutUnanswered,
                (true, _) => Ending::TimedOutCut,
                (false, _) => Ending::Incomplete,
            };
            // Before any head went out the front server answers 502 for it.
            let status = if status == 0 { 502 } else { status };
            (status, ending, super::End::Incomplete(status))
        };
        crate::logging::access(&crate::logging::Access {
            head: &r.head,
            id: &r.id,
            protocol: r.protocol,
            status,
            ending,
            bytes: body,
            started: r.started,
        });
        if let Some(m) = cut.monitor {
            let served = super::Served {
                end,
                sent: super::Sent {
                    bytes: body,
                    started: r.started,
                    late,
                    cut: true,
                    closed_by: None,
                },
                app_error: None,
            };
            // Its thread reaches its line again only once this is NAMED.
            m.cut(thread, r.protocol, &served);
        }
        s.state.store(NAMED, Ordering::Release);
    }
    named
}

/// How many of the requests a stop leaves queued are named one by one
/// ([`never_started`]); the rest are counted in one line.
pub const NEVER_STARTED_NAMED: usize = 16;

/// Ends the requests a stop that cuts the running ones off leaves queued (they were
/// read and waited for a Python thread, or the event loop): each gets its access line
/// (502, the front server's answer for a connection closed before any header, marked
/// incomplete) and its connection closes without an answer. With `why` (what cut them
/// off), the first [`NEVER_STARTED_NAMED`] are named one by one; `None`: the master
/// names them (a `--timeout` kill). `before`: how many an earlier sweep of the same
/// stop took (they count toward the first [`NEVER_STARTED_NAMED`]). Returns how many
/// were left unnamed.
// regression (probe 361): each closed with an anonymous "internal error: a response was
// dropped unfinished" ERROR from its sink's drop, and none was named.
pub fn never_started(reqs: Vec<super::Request>, why: Option<&str>, before: usize) -> usize {
    let mut unnamed = 0;
    for (i, mut r) in reqs.into_iter().enumerate() {
        let sent = r.sink.abandon();
        match why {
            Some(why) if before + i < NEVER_STARTED_NAMED => {
                let h = &r.head;
                // The server's queue, an ASGI worker's too: not a WSGI line.
                // regression (probe 390): FastAPI's read `postern::wsgi::inflight`.
                tracing::warn!(
                    target: "postern::server",
                    request_id = %r.request_id,
                    method = %Untrusted(h.get(b"REQUEST_METHOD").unwrap_or(b"-")),
                    path = %Untrusted(
                        h.get(b"REQUEST_URI")
                            .or_else(|| h.get(b"PATH_INFO"))
                            .unwrap_or(b"-")
                    ),
                    remote = %Untrusted(h.get(b"REMOTE_ADDR").unwrap_or(b"-")),
                    "request cut off {why} before it started: it had been read and waited for its turn; its connection closes without an answer (the front server answers 502, or tries its next upstream)"
                );
            }
            _ => unnamed += 1,
        }
        // A late 504 (FastCGI, `--timeout`) took its answer first: said as sent.
        // regression: its access line said `response incomplete` for a whole 504.
        let (status, ending) = if sent.late {
            (504, crate::logging::Ending::TimedOut)
        } else {
            (502, crate::logging::Ending::Incomplete)
        };
        crate::logging::access(&crate::logging::Access {
            head: &r.head,
            id: &r.request_id,
            protocol: r.listener.protocol,
            status,
            ending,
            bytes: sent.bytes,
            started: sent.started,
        });
    }
    unnamed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &str) -> Head {
        let mut h = empty_head();
        h.buf = bytes::Bytes::from(path.as_bytes().to_vec());
        h
    }

    // regression: after a panic between begin and end, the thread's next request
    // (refused before its own begin) took the stale head back in its end.
    #[test]
    fn an_abandoned_request_is_not_taken_back_by_the_next_end() {
        let slot = Slot::new();
        let mut a = head("/a");
        let id = RequestId::generate();
        slot.begin(&mut a, &id, Protocol::Uwsgi);
        // A panic: no end; the pool abandons it.
        slot.abandon();
        let mut b = head("/b");
        assert!(!slot.end(&mut b));
        assert_eq!(&b.buf[..], b"/b");
        assert_eq!(slot.state.load(Ordering::Relaxed), IDLE);
        // A begin after a missed end (and no abandon) starts clean too.
        slot.begin(&mut a, &id, Protocol::Uwsgi);
        let mut c = head("/c");
        slot.begin(&mut c, &id, Protocol::Uwsgi);
        let mut back = head("/x");
        assert!(!slot.end(&mut back));
        assert_eq!(&back.buf[..], b"/c");
    }
}
