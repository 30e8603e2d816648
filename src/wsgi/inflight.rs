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
//! stores two numbers in the thread's slot, which the responder holds.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
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

/// One Python thread's request, if any. One per Python thread, never freed (the
/// threads live as long as the process).
#[derive(Default)]
pub struct Slot {
    running: Mutex<Option<Running>>,
    /// The response's status once its head went out (0: not yet).
    status: AtomicU32,
    /// The body bytes written so far.
    body: AtomicU64,
    /// The stop named this request: its thread writes no access line of its own.
    named: AtomicBool,
}

impl Slot {
    /// How far the response got: its status (sent) and body bytes so far.
    pub(super) fn progress(&self, status: u16, body: u64) {
        self.status.store(u32::from(status), Ordering::Relaxed);
        self.body.store(body, Ordering::Relaxed);
    }
}

/// Every Python thread's slot (one pool per process).
static SLOTS: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Cell<Option<&'static Slot>> = const { Cell::new(None) };
}

/// This thread's slot, made at its first request.
fn mine() -> &'static Slot {
    MINE.with(|m| {
        if let Some(s) = m.get() {
            return s;
        }
        let slot: &'static Slot = Box::leak(Box::default());
        SLOTS.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        m.set(Some(slot));
        slot
    })
}

fn empty_head() -> Head {
    Head {
        buf: bytes::Bytes::new(),
        vars: Vec::new(),
        modifier30: false,
        content_length: 0,
    }
}

/// The app is about to run `head`'s request: the head moves into this thread's slot
/// until [`end`] gives it back. The slot is where the response's writes say how far
/// they got ([`Slot::progress`]: the responder holds it, no thread-local look-up).
pub(super) fn begin(head: &mut Head, id: &RequestId, protocol: Protocol) -> &'static Slot {
    let head = std::mem::replace(head, empty_head());
    let s = mine();
    s.progress(0, 0);
    *s.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
        head,
        id: *id,
        protocol,
        started: Instant::now(),
    });
    s
}

/// The app is done with the request [`begin`] recorded: its head comes back into
/// `head`. True when a stop has named it already (its access line is written).
pub(super) fn end(head: &mut Head) -> bool {
    let Some(s) = MINE.with(Cell::get) else {
        return false;
    };
    if let Some(r) = s.running.lock().unwrap_or_else(|e| e.into_inner()).take() {
        *head = r.head;
    }
    s.named.swap(false, Ordering::Relaxed)
}

/// Names each request a Python thread still runs as the worker exits, in its span, with
/// `why` (what cut it off) and how far its response got, and writes its access line
/// marked incomplete. Returns how many were named.
pub fn cut_off(why: &str) -> usize {
    let slots: Vec<&'static Slot> = SLOTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut named = 0;
    for s in slots {
        let running = s.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = running.as_ref() else { continue };
        if s.named.swap(true, Ordering::Relaxed) {
            continue;
        }
        named += 1;
        let status = u16::try_from(s.status.load(Ordering::Relaxed)).unwrap_or(0);
        let body = s.body.load(Ordering::Relaxed);
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
        if status == 0 {
            tracing::warn!(
                request_id,
                method = %method,
                path = %path,
                remote = %remote,
                ran_ms,
                "request cut off {why}: the app still ran it, and its response had not started (its front server gets an error)"
            );
        } else {
            tracing::warn!(
                request_id,
                method = %method,
                path = %path,
                remote = %remote,
                ran_ms,
                response_status = status,
                body_bytes = body,
                "request cut off {why}: the app still ran it; its head and {body} body bytes were sent, the rest never will be (the response is incomplete)"
            );
        }
        // Before any head went out the front server answers 502 for it.
        let status = if status == 0 { 502 } else { status };
        crate::logging::access(&crate::logging::Access {
            head: &r.head,
            id: &r.id,
            protocol: r.protocol,
            status,
            ending: crate::logging::Ending::Incomplete,
            bytes: body,
            started: r.started,
        });
    }
    named
}
