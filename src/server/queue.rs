//! The ready queue: complete requests the slow lane hands back to the Python threads,
//! and the flags of the stop sequence. Everything in the server layer may use it; it
//! uses nothing of the server layer.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::event::EventfdFlags;

use crate::wsgi::Request;

/// State shared by the Python threads, the slow lane and the shutdown sequence.
pub struct Queue {
    queue: Mutex<VecDeque<Request>>,
    ready: Condvar,
    /// Semaphore eventfd: one token per queued request, so a thread blocked in
    /// epoll_wait on the listeners also wakes for queued work.
    tokens: OwnedFd,
    accepting: AtomicBool,
    exiting: AtomicBool,
}

impl Queue {
    pub fn new() -> std::io::Result<Arc<Queue>> {
        let tokens = rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )?;
        Ok(Arc::new(Queue {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            tokens,
            accepting: AtomicBool::new(true),
            exiting: AtomicBool::new(false),
        }))
    }

    /// The eventfd that is readable while requests are queued (or once stopping).
    pub fn tokens(&self) -> &OwnedFd {
        &self.tokens
    }

    /// Queues a complete request from the slow lane.
    pub fn push(&self, req: Request) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(req);
        self.ready.notify_one();
        let _ = rustix::io::write(&self.tokens, &1u64.to_ne_bytes());
    }

    /// Takes one token and the request it stands for (the eventfd was readable).
    pub fn take(&self) -> Option<Request> {
        let mut token = [0u8; 8];
        rustix::io::read(&self.tokens, &mut token).ok()?;
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// False once the server stops accepting new connections.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// While draining: the next queued request, waiting for the slow lane to complete
    /// one; `None` once [`exit`](Self::exit) was called and the queue is empty.
    pub fn next_draining(&self) -> Option<Request> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = q.pop_front() {
                return Some(r);
            }
            if self.exiting.load(Ordering::SeqCst) {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stop accepting: threads leave the listeners alone and serve only the queue.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        // A huge count nobody reads any more: every epoll_wait returns from now on.
        let _ = rustix::io::write(&self.tokens, &(u64::MAX / 2).to_ne_bytes());
        self.ready.notify_all();
    }

    /// Let the threads end once the queue is empty.
    pub fn exit(&self) {
        self.exiting.store(true, Ordering::SeqCst);
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.ready.notify_all();
    }
}
