//! The ready queue: complete requests the slow lane hands back to the Python threads,
//! and the flags of the stop sequence. Everything in the server layer may use it; it
//! uses nothing of the server layer.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Past --graceful-timeout: the threads end without waiting for the slow lane.
    abandoning: AtomicBool,
    /// Requests are cut off: nothing more is taken ([`Queue::halt`]).
    halted: AtomicBool,
    /// Slow-lane tasks alive: each may still push a request. A Python thread can hand
    /// a connection to the lane at any time while it runs (the rest of a body that
    /// did not arrive in time, input during an inline FastCGI request), so the stop
    /// cannot wait for the lane once and then let the threads go: a request pushed
    /// after that was dropped unserved (regression: "a FastCGI response was dropped
    /// unfinished" and a 502 for an upload during a reload, found by benches/soak.py).
    lane_tasks: AtomicUsize,
    /// Threads (or the ASGI loop's draining hand-off, when it has a place) waiting in
    /// [`Queue::next_draining`] with nothing to take; changed under `queue`'s lock.
    idle: AtomicUsize,
    /// The ASGI loop's free `--max-concurrency` places beyond the one its draining
    /// hand-off waits with ([`Queue::set_spare`]).
    spare: AtomicUsize,
    /// Requests a stop took out of the queue unstarted ([`Queue::take_all`]).
    taken_unstarted: AtomicUsize,
    /// Requests the slow lane has begun (their head came) and not queued yet: bodies
    /// still arriving ([`Queue::reading_request`]).
    reading: AtomicUsize,
    /// Told when [`Queue::room`] may have grown (a thread idles, a place frees): the
    /// stop's share of the listen queues waits for it.
    room_grew: tokio::sync::Notify,
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
            abandoning: AtomicBool::new(false),
            halted: AtomicBool::new(false),
            lane_tasks: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            spare: AtomicUsize::new(0),
            taken_unstarted: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            room_grew: tokio::sync::Notify::new(),
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

    /// Queues a request the slow lane has read ([`Queue::reading_request`]): no longer
    /// counted as being read, under the same lock as the queue, so that a stop's
    /// [`Queue::sweep`] counts it once.
    pub fn push_read(&self, req: Request, reading: Reading) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(req);
        drop(reading);
        drop(q);
        self.ready.notify_one();
        let _ = rustix::io::write(&self.tokens, &1u64.to_ne_bytes());
    }

    /// A stop that cut the running requests off takes every request still queued
    /// ([`Queue::take_all`]) and counts those whose body is still being read, in one
    /// look.
    pub fn sweep(&self) -> (Vec<Request>, usize) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let taken: Vec<Request> = q.drain(..).collect();
        self.taken_unstarted
            .fetch_add(taken.len(), Ordering::SeqCst);
        (taken, self.reading.load(Ordering::SeqCst))
    }

    /// Requests whose body the slow lane is still reading ([`Queue::reading_request`]).
    pub fn reading(&self) -> usize {
        self.reading.load(Ordering::SeqCst)
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

    /// Slow-lane tasks still alive (each may still queue a request).
    pub fn lane_tasks(&self) -> usize {
        self.lane_tasks.load(Ordering::SeqCst)
    }

    /// Requests queued whole for a Python thread.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The first `max` requests queued: their head, id and protocol (each a refcount
    /// and a copy of the id; called every 50 ms during the stop only).
    pub fn first_queued(
        &self,
        max: usize,
    ) -> Vec<(
        crate::codec::Head,
        crate::logging::RequestId,
        crate::codec::Protocol,
    )> {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().take(max).map(Request::named).collect()
    }

    /// Takes every request still queued (a stop that cut the running ones off: they
    /// will never start); they stay counted in [`Queue::unstarted`].
    pub fn take_all(&self) -> Vec<Request> {
        self.sweep().0
    }

    /// Requests that will not start, or not yet: those queued, and those a stop took
    /// out of the queue ([`Queue::take_all`]).
    pub fn unstarted(&self) -> usize {
        self.queued() + self.taken_unstarted.load(Ordering::SeqCst)
    }

    /// False once the server stops accepting new connections.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// While draining: the next queued request, waiting for the slow lane to complete
    /// one; `None` once [`exit`](Self::exit) was called, the queue is empty and no
    /// slow-lane task is left that could still push one (or at once after
    /// [`abandon`](Self::abandon)).
    pub fn next_draining(&self) -> Option<Request> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.halted.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(r) = q.pop_front() {
                return Some(r);
            }
            if self.exiting.load(Ordering::SeqCst)
                && (self.lane_tasks.load(Ordering::SeqCst) == 0
                    || self.abandoning.load(Ordering::SeqCst))
            {
                return None;
            }
            self.idle.fetch_add(1, Ordering::SeqCst);
            self.room_grew.notify_one();
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// While draining: how many more requests this worker could start at once (its
    /// threads waiting for one, or its ASGI loop's free places, less the requests
    /// already queued for them).
    pub fn room(&self) -> usize {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        (self.idle.load(Ordering::SeqCst) + self.spare.load(Ordering::SeqCst))
            .saturating_sub(q.len())
    }

    /// While draining, the ASGI loop has `n` free places besides the one its hand-off
    /// waits in [`Queue::next_draining`] with (counted in [`Queue::room`]).
    pub fn set_spare(&self, n: usize) {
        if self.spare.swap(n, Ordering::SeqCst) < n {
            self.room_grew.notify_one();
        }
    }

    /// Completes once [`Queue::room`] may have grown since the last such wait (at once
    /// if it did meanwhile: one notification is kept).
    pub async fn room_grew(&self) {
        self.room_grew.notified().await;
    }

    /// Stop accepting: threads leave the listeners alone and serve only the queue.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        // A huge count nobody reads any more: every epoll_wait returns from now on.
        let _ = rustix::io::write(&self.tokens, &(u64::MAX / 2).to_ne_bytes());
        self.ready.notify_all();
    }

    /// Let the threads end once the queue is empty and the slow lane has no task left.
    pub fn exit(&self) {
        self.exiting.store(true, Ordering::SeqCst);
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.ready.notify_all();
    }

    /// Let the threads end once the queue is empty, whatever the slow lane still
    /// holds (--graceful-timeout has passed).
    pub fn abandon(&self) {
        self.abandoning.store(true, Ordering::SeqCst);
        self.exit();
    }

    /// The stop cuts the running requests off (`--graceful-timeout`, a second signal,
    /// SIGQUIT): nothing more is taken from the queue; what is in it stays there, to
    /// be counted, named and closed by the stop (`take_all`).
    /// regression: a thread or the ASGI loop freed in the moments before the exit
    /// started a queued request that the exit then cut off unanswered and uncounted.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
        self.exit();
    }

    /// The slow lane begins reading a request's body (its head came): counted until the
    /// guard is dropped (queued by [`Queue::push_read`], answered, or cut off). A stop
    /// that cuts requests off adds these to the running ones (they are on no line); a
    /// kept FastCGI connection whose request runs or waits in the queue is not one
    /// (it is on a line, or queued). regression: the stop counted every slow-lane task,
    /// so 1 request running and 3 queued on kept FastCGI connections read "4 requests
    /// running and 3 accepted".
    pub fn reading_request(self: &Arc<Self>) -> Reading {
        self.reading.fetch_add(1, Ordering::SeqCst);
        Reading(Arc::clone(self))
    }

    /// A slow-lane task starts: the threads wait for it at the stop. Its guard says
    /// when it ends (dropped: finished, cancelled or panicked).
    pub fn lane_task(self: &Arc<Self>) -> LaneTask {
        self.lane_tasks.fetch_add(1, Ordering::SeqCst);
        LaneTask(Arc::clone(self))
    }
}

/// A live slow-lane task (see [`Queue::lane_task`]).
pub struct LaneTask(Arc<Queue>);

impl Drop for LaneTask {
    fn drop(&mut self) {
        if self.0.lane_tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Under the lock: a thread that saw the count above zero is waiting by now.
            let _q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            self.0.ready.notify_all();
        }
    }
}

/// A request the slow lane is reading (see [`Queue::reading_request`]).
pub struct Reading(Arc<Queue>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_threads_wait_for_the_slow_lane_tasks_left() {
        let q = Queue::new().unwrap();
        let task = q.lane_task();
        q.exit();
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.next_draining().is_none())
        };
        // The thread waits while the task lives; the task ends without a request.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "a thread left while a lane task could still push"
        );
        drop(task);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn abandon_lets_the_threads_go_whatever_the_lane_holds() {
        let q = Queue::new().unwrap();
        let _task = q.lane_task();
        q.abandon();
        assert!(q.next_draining().is_none());
    }
}
