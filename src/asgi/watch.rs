//! Every ASGI task watched like a WSGI request: the loop thread tells the [`Monitor`]
//! when each task begins and ends, and keeps the **oldest** tasks in flight on the
//! worker's scoreboard lines (at least 16, `--threads` if more). The master's
//! `--timeout` looks at the lines, and the oldest task is always on one, so a task
//! that never finishes is caught whatever else runs; `/status` shows the oldest tasks
//! and the count of all of them (the monitor counts each task in and out).
//!
//! The lines stay on the oldest tasks at little cost: a task that starts takes a free
//! line if there is one (then every older task has one too); otherwise it waits in
//! `unshown`, in start order, and when a task on a line ends, the oldest waiting one
//! moves onto that line, with its own start time. With no more tasks than lines (the
//! usual case) that is a push and a pop on a short `Vec` per task.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{Head, Protocol};
use crate::logging::RequestId;
use crate::wsgi::{Monitor, Served};

/// A task's handle in the watch: its start order.
pub type TaskId = usize;

/// A task that has no line (yet): what it needs to be shown later.
struct Waiting {
    head: Head,
    id: RequestId,
    protocol: Protocol,
    since: Instant,
}

/// The loop thread's view of its tasks (not `Send`: the loop thread only).
pub struct Watch {
    monitor: Option<Arc<dyn Monitor>>,
    /// Free lines, the lowest last.
    free: RefCell<Vec<usize>>,
    /// `on_line[l]`: the task on line `l` (`None`: free).
    on_line: RefCell<Vec<Option<TaskId>>>,
    /// Tasks without a line, oldest first.
    unshown: RefCell<BTreeMap<TaskId, Waiting>>,
    next: Cell<TaskId>,
}

impl Watch {
    /// The watch of a worker serving up to `max_concurrency` tasks (`monitor`: none
    /// without a master and without `--stats`; then nothing is watched).
    pub fn new(monitor: Option<Arc<dyn Monitor>>, max_concurrency: usize) -> Watch {
        let lines = monitor.as_ref().map_or(0, |m| m.tasks(max_concurrency));
        Watch {
            monitor,
            free: RefCell::new((0..lines).rev().collect()),
            on_line: RefCell::new(vec![None; lines]),
            unshown: RefCell::new(BTreeMap::new()),
            next: Cell::new(0),
        }
    }

    /// A task starts serving `head` (request id `rid`): its id, for [`Watch::end`].
    pub fn begin(&self, head: &Head, rid: &RequestId, protocol: Protocol) -> TaskId {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        let Some(m) = &self.monitor else {
            return id;
        };
        let line = self.free.borrow_mut().pop();
        match line {
            Some(l) => self.on_line.borrow_mut()[l] = Some(id),
            None => {
                self.unshown.borrow_mut().insert(
                    id,
                    Waiting {
                        head: head.clone(),
                        id: *rid,
                        protocol,
                        since: Instant::now(),
                    },
                );
            }
        }
        m.task_begin(line, head, rid, protocol);
        id
    }

    /// The response of task `id` is complete while its task runs on (work the app
    /// does after its last `http.response.body`: a FastAPI `BackgroundTasks` task):
    /// the task leaves its line, so `--timeout` no longer looks at it (the request is
    /// served), and the oldest waiting task takes the line. It still counts as a task
    /// until [`Watch::end`].
    pub fn responded(&self, id: TaskId) {
        let Some(m) = &self.monitor else {
            return;
        };
        if self.left_unshown(id) {
            return;
        }
        let line = self.on_line.borrow().iter().position(|&t| t == Some(id));
        if let Some(l) = line {
            if !self.hand_on(m, l) {
                m.task_idle(l);
            }
        }
    }

    /// Whether task `id` was waiting for a line (it waits no more).
    fn left_unshown(&self, id: TaskId) -> bool {
        let mut unshown = self.unshown.borrow_mut();
        !unshown.is_empty() && unshown.remove(&id).is_some()
    }

    /// Line `l` is left: the oldest task without a line takes it (true), else it is
    /// free (false; the caller marks it idle, or counts the end that left it).
    fn hand_on(&self, m: &Arc<dyn Monitor>, l: usize) -> bool {
        let next = self.unshown.borrow_mut().pop_first();
        let Some((next, w)) = next else {
            self.on_line.borrow_mut()[l] = None;
            self.free.borrow_mut().push(l);
            return false;
        };
        self.on_line.borrow_mut()[l] = Some(next);
        m.task_show(l, &w.head, &w.id, w.protocol, w.since);
        true
    }

    /// The task `id` ended (its response is finished); `served`: what went out.
    pub fn end(&self, id: TaskId, protocol: Protocol, served: Option<&Served>) {
        let Some(m) = &self.monitor else {
            return;
        };
        let line = if self.left_unshown(id) {
            None
        } else {
            self.on_line.borrow().iter().position(|&t| t == Some(id))
        };
        // A task that already left its line (`responded`) is on none: counted only.
        m.task_end(line, protocol, served);
        if let Some(l) = line {
            // Its idle mark, if no task takes the line, is the end's.
            self.hand_on(m, l);
        }
    }

    /// Requests the worker may still start before `--max-requests`, with `in_flight`
    /// running (`None`: no limit).
    pub fn may_start(&self, in_flight: usize) -> Option<u64> {
        let left = self.monitor.as_ref()?.requests_left()?;
        Some(left.saturating_sub(in_flight as u64))
    }

    /// The worker stopped accepting.
    pub fn has_stopped(&self) -> bool {
        self.monitor.as_ref().is_some_and(|m| m.has_stopped())
    }

    /// Every request `--max-requests` allows has started: recycle now.
    pub fn limit_taken(&self) {
        if let Some(m) = &self.monitor {
            m.limit_taken();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the watch tells the monitor: the line of each task shown.
    #[derive(Default)]
    struct Lines(Mutex<Vec<Option<String>>>, Mutex<u64>);

    fn target(head: &Head) -> String {
        String::from_utf8_lossy(head.get(b"REQUEST_URI").unwrap_or(b"-")).into_owned()
    }

    impl Monitor for Lines {
        fn begin(&self, _: usize, _: &Head, _: &RequestId, _: Protocol) {}
        fn end(&self, _: usize, _: Option<&Served>, _: bool) {}
        fn tasks(&self, _: usize) -> usize {
            self.0.lock().unwrap().resize(2, None);
            2
        }
        fn task_begin(&self, line: Option<usize>, head: &Head, id: &RequestId, _: Protocol) {
            assert_eq!(id.as_str(), rid(&target(head)).as_str());
            if let Some(l) = line {
                self.0.lock().unwrap()[l] = Some(target(head));
            }
        }
        fn task_show(&self, line: usize, head: &Head, id: &RequestId, _: Protocol, _: Instant) {
            // A task shown after waiting carries its own request id (not `-`).
            assert_eq!(id.as_str(), rid(&target(head)).as_str());
            self.0.lock().unwrap()[line] = Some(target(head));
        }
        fn task_idle(&self, line: usize) {
            self.0.lock().unwrap()[line] = None;
        }
        fn task_end(&self, line: Option<usize>, _: Protocol, _: Option<&Served>) {
            *self.1.lock().unwrap() += 1;
            if let Some(l) = line {
                self.0.lock().unwrap()[l] = None;
            }
        }
    }

    fn head(uri: &str) -> Head {
        let mut buf = Vec::new();
        let mut vars = Vec::new();
        for (k, v) in [("REQUEST_METHOD", "GET"), ("REQUEST_URI", uri)] {
            let ks = buf.len() as u32;
            buf.extend_from_slice(k.as_bytes());
            let vs = buf.len() as u32;
            buf.extend_from_slice(v.as_bytes());
            vars.push((ks..vs, vs..buf.len() as u32));
        }
        Head {
            buf: bytes::Bytes::from(buf),
            vars,
            modifier30: false,
            content_length: 0,
        }
    }

    /// The request id of the task serving `uri` ("/3" -> "req3").
    fn rid(uri: &str) -> RequestId {
        RequestId::sent(format!("req{}", &uri[1..]).as_bytes()).unwrap()
    }

    /// Begins the task of a GET of `uri` on `w`.
    fn begin(w: &Watch, uri: &str) -> TaskId {
        w.begin(&head(uri), &rid(uri), Protocol::Uwsgi)
    }

    fn shown(m: &Lines) -> Vec<Option<String>> {
        m.0.lock().unwrap().clone()
    }

    #[test]
    fn the_lines_show_the_oldest_tasks() {
        let m = Arc::new(Lines::default());
        let w = Watch::new(Some(m.clone() as Arc<dyn Monitor>), 1000);
        let ids: Vec<TaskId> = (0..5).map(|i| begin(&w, &format!("/{i}"))).collect();
        let s = |v: &[&str]| v.iter().map(|x| Some(x.to_string())).collect::<Vec<_>>();
        assert_eq!(shown(&m), s(&["/0", "/1"]));
        // A task without a line ends: nothing moves.
        w.end(ids[3], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&["/0", "/1"]));
        // The oldest ends: the oldest waiting one (/2) takes its line.
        w.end(ids[0], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&["/2", "/1"]));
        w.end(ids[1], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&["/2", "/4"]));
        w.end(ids[4], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), vec![Some("/2".into()), None]);
        // A new task takes the free line.
        let id = begin(&w, "/5");
        assert_eq!(shown(&m), s(&["/2", "/5"]));
        w.end(ids[2], Protocol::Uwsgi, None);
        w.end(id, Protocol::Uwsgi, None);
        assert_eq!(shown(&m), vec![None, None]);
        assert_eq!(*m.1.lock().unwrap(), 6, "every task counted once");
    }

    // regression: a task whose response was complete (a FastAPI BackgroundTasks task
    // running after it) stayed on its line, so --timeout killed the worker, and every
    // request on it, for a request served in milliseconds.
    #[test]
    fn a_task_whose_response_is_complete_leaves_its_line_and_still_counts() {
        let m = Arc::new(Lines::default());
        let w = Watch::new(Some(m.clone() as Arc<dyn Monitor>), 1000);
        let ids: Vec<TaskId> = (0..3).map(|i| begin(&w, &format!("/{i}"))).collect();
        let s = |v: &[Option<&str>]| v.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(shown(&m), s(&[Some("/0"), Some("/1")]));
        // /0's response is complete, its task runs on: /2 takes its line.
        w.responded(ids[0]);
        assert_eq!(shown(&m), s(&[Some("/2"), Some("/1")]));
        // /1 too, with nobody waiting: its line is idle.
        w.responded(ids[1]);
        assert_eq!(shown(&m), s(&[Some("/2"), None]));
        assert_eq!(*m.1.lock().unwrap(), 0, "no task has ended yet");
        // A new task takes the idle line; the tasks that left theirs end later,
        // counted once each, and touch no line.
        let id = begin(&w, "/3");
        assert_eq!(shown(&m), s(&[Some("/2"), Some("/3")]));
        w.end(ids[0], Protocol::Uwsgi, None);
        w.end(ids[1], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&[Some("/2"), Some("/3")]));
        // A task without a line that responds never gets one.
        let late = begin(&w, "/4");
        w.responded(late);
        w.end(ids[2], Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&[None, Some("/3")]));
        w.end(late, Protocol::Uwsgi, None);
        w.end(id, Protocol::Uwsgi, None);
        assert_eq!(shown(&m), s(&[None, None]));
        assert_eq!(*m.1.lock().unwrap(), 5, "every task counted once");
    }
}
