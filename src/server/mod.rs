//! Serving: the Python threads accept and answer complete requests themselves
//! ([`acceptor`], the fast path); tokio reads the rest ([`connection`], the slow lane);
//! and the graceful stop (stop accepting, let in-flight requests finish, remove Unix
//! sockets).
//!
//! - [`listener`]: binding TCP/Unix sockets (mode, owner, stale sockets).
//! - [`acceptor`]: accept + first read on the Python threads; the ready queue.
//! - [`pending`]: new connections waiting in the Python threads' epoll for their
//!   first bytes.
//! - [`connection`]: the slow lane: partial heads, large/slow bodies, bad input.
//! - [`slow_clients`]: the log lines of clients dropped at `--head-timeout`, summed
//!   up past the first few.
//! - [`sink`]: writing the response from a Python thread, then close or abort.
//! - [`timer`]: a timer that wakes the I/O thread once (a timerfd), for the idle ones.
//! - [`fastcgi`]: FastCGI connections, which outlive a request (keep-conn) and carry
//!   several at once (multiplexing): parked in the Python threads' epoll when idle.

pub mod acceptor;
pub mod admission;
pub mod arming;
pub mod connection;
pub mod fastcgi;
pub mod lane;
pub mod listener;
pub mod pending;
pub mod queue;
pub mod sched;
pub mod sink;
pub mod slow_clients;
pub mod span;
pub mod timer;
pub mod wake;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use acceptor::{Acceptor, Backlog, Listener};
use lane::{Limits, SlowLane};
use listener::{Bound, BoundSocket};
use queue::Queue;

use crate::wsgi::pool::Pool;
use crate::wsgi::{App, Settings};

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Asgi(#[from] crate::asgi::AsgiError),
    #[error(transparent)]
    Stop(#[from] crate::stop::StopError),
}

/// How this process serves.
pub enum Mode {
    /// The only process: it owns the listeners and removes them at the end;
    /// `on_ready` announces that it serves.
    Single { on_ready: Box<dyn FnOnce() + Send> },
    /// A worker under the master: the listeners are shared; `on_ready` tells the
    /// master when this worker serves.
    Worker { on_ready: Box<dyn FnOnce() + Send> },
}

/// Serves `app` on the bound listeners until SIGTERM/SIGINT, then stops gracefully:
/// no new connections, the slow lane and the Python threads finish what is in flight
/// (up to `graceful`), Unix sockets are removed. Returns true when everything finished
/// in time. `asgi`: the app is an ASGI app, served on an event loop instead of the
/// WSGI threads.
pub fn run(
    bound: Vec<Bound>,
    app: App,
    settings: Settings,
    limits: Limits,
    graceful: Duration,
    mode: Mode,
    asgi: Option<crate::asgi::AsgiSettings>,
) -> Result<bool, ServerError> {
    // One I/O thread is plenty: it only carries the slow lane.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("postern-io")
        // Its writes to Unix sockets are write(2)s, exposed should native code set
        // SIGPIPE back to its default action.
        .on_thread_start(crate::sigpipe::block_on_this_thread)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    slow_clients::summaries_on(runtime.handle());
    // Before any Python thread serves: a process that cannot take its stop must not
    // serve (it could be stopped only by SIGKILL), nor tell the master it does.
    // regression: it served on, never ready, deaf to SIGTERM.
    let single = matches!(mode, Mode::Single { .. });
    let mut stops = {
        let _runtime = runtime.enter();
        crate::stop::install(single).and_then(|()| crate::stop::Waiter::new())?
    };
    stops.on_logs_reopened(crate::logging::say_reopened);
    let queue = Queue::new().map_err(ServerError::Runtime)?;
    let tracker = TaskTracker::new();
    let stopping = CancellationToken::new();
    // The Unix socket files this process created (guards): removed once a single
    // process has stopped accepting, else when `run` returns.
    let mut socket_files = Vec::new();
    let listeners: Vec<Listener> = bound
        .into_iter()
        .map(|b| {
            let label: Arc<str> = Arc::from(b.addr.to_string());
            socket_files.extend(b.socket_file);
            let (sock, tcp) = match b.socket {
                BoundSocket::Tcp(l) => (socket2::Socket::from(l), true),
                BoundSocket::Unix(l) => (socket2::Socket::from(l), false),
            };
            Listener {
                sock,
                tcp,
                label,
                info: b.info,
                inherited: b.inherited,
            }
        })
        .collect();
    let listeners = Arc::new(listeners);
    let epoll = Arc::new(acceptor::epoll_for(&queue, &listeners).map_err(ServerError::Runtime)?);
    let parking = fastcgi::Parking::new(Arc::clone(&epoll));
    parking.run_on(runtime.handle().clone());
    let monitor = settings.monitor.clone();
    if monitor.as_ref().is_some_and(|m| m.timeout().is_some()) {
        parking.watch_overdue();
    }
    if listeners
        .iter()
        .any(|l| l.info.protocol == crate::codec::Protocol::FastCgi)
    {
        fastcgi::crash::install();
    }
    // With --max-requests every connection that has sent nothing waits here (bounded
    // by --max-connections): only here does its request begin after a look at the
    // room left; the slow lane would serve it past the limit.
    let max_requests = monitor
        .as_ref()
        .is_some_and(|m| m.requests_left().is_some());
    let pending = pending::Pending::new(
        Arc::clone(&epoll),
        limits.head_timeout,
        if max_requests {
            usize::MAX
        } else {
            pending::MAX_WAITING
        },
    );
    // A worker under a master hands its idle FastCGI keep-alive connections to the
    // workers that serve on when it leaves (unless the whole server stops, or its
    // master is gone: then every worker leaves, and none would read them), and takes
    // those of workers that leave before it (fastcgi::handover).
    // regression: after a master SIGKILL the orphans handed their kept connections to
    // each other, nobody read the requests nginx sent on them, and each hung until the
    // last orphan exited (~30 s, then a 502).
    let handover = match mode {
        Mode::Worker { .. } => fastcgi::handover::Channel::get(),
        Mode::Single { .. } => None,
    };
    if let Some(channel) = handover {
        let m = monitor.clone();
        parking.hand_over_to(
            channel,
            Box::new(move || {
                !crate::stop::orphaned() && !m.as_ref().is_some_and(|m| m.server_stopping())
            }),
        );
        if let Err(e) = channel.watch(&*epoll) {
            tracing::warn!(error = %e, "cannot take FastCGI connections handed over by leaving workers");
        }
    }
    let idle_close = CancellationToken::new();
    let acceptor = Arc::new(Acceptor {
        epoll: Arc::clone(&epoll),
        parking: Arc::clone(&parking),
        fcgi: limits.fcgi.clone(),
        waiter: std::sync::Mutex::new(()),
        listeners: Arc::clone(&listeners),
        queue: Arc::clone(&queue),
        slow: SlowLane {
            handle: runtime.handle().clone(),
            tracker: tracker.clone(),
            queue: Arc::clone(&queue),
            limits: limits.clone(),
            stopping: stopping.clone(),
            idle_close: idle_close.clone(),
            monitor: monitor.clone(),
        },
        admission: admission::Admission::new(
            limits
                .max_connections
                .unwrap_or_else(admission::default_max),
            arming::Arming::new(Arc::clone(&epoll), Arc::clone(&listeners)),
        ),
        limits,
        pending,
        shut: listener::ShutWatch::default(),
        backlog_turn: Default::default(),
    });
    // At --max-connections, slow heads (any protocol) and a front server's idle kept
    // FastCGI connections must not hold every place while a new connection waits.
    runtime.spawn(fastcgi::keep_room(
        Arc::clone(&parking),
        Arc::clone(&acceptor.admission),
        idle_close.clone(),
    ));
    // FastCGI bodies trickling to apps that wait for them must not hold every thread
    // or --max-concurrency place while a request waits for one either.
    if asgi.is_some() {
        acceptor.admission.serves_asgi();
    }
    if listeners
        .iter()
        .any(|l| l.info.protocol == crate::codec::Protocol::FastCgi)
    {
        if asgi.is_none() && monitor.is_none() {
            acceptor.admission.count_threads();
        }
        runtime.spawn(fastcgi::keep_apps_free(
            fastcgi::Places {
                admission: Arc::clone(&acceptor.admission),
                parking: Arc::clone(&parking),
                queue: Arc::clone(&acceptor.queue),
                monitor: monitor.clone(),
            },
            idle_close.clone(),
        ));
    }
    // A WSGI worker whose Python threads are all busy, or an ASGI worker at its
    // --max-concurrency, hands the requests that come on its parked kept FastCGI
    // connections, and on new connections (any protocol) accepted before their bytes
    // came, to the workers with a free thread or place. With --workers 1 too: a
    // SIGTTIN may add one (an idle worker's watch costs nothing).
    if let (Some(_), Some(m)) = (handover, monitor.clone()) {
        if let Some(wake) = m.all_busy_wake() {
            let watched = if asgi.is_some() {
                parking.watch_at_cap()
            } else {
                parking.watch_busy()
            };
            if let Err(e) = watched {
                tracing::warn!(error = %e, "cannot watch the parked FastCGI connections: a request on one waits for this worker's threads when all are busy");
            }
            let (m2, m3, m4) = (Arc::clone(&m), Arc::clone(&m), Arc::clone(&m));
            let (a1, a2) = (Arc::downgrade(&acceptor), Arc::downgrade(&acceptor));
            fastcgi::relieve_on_thread(
                Arc::clone(&parking),
                fastcgi::Busy {
                    all_busy: move || m.threads_all_busy(),
                    idle_elsewhere: move || m2.idle_elsewhere(),
                    siblings: move || m3.has_siblings(),
                    ended: move || m4.requests_ended(),
                    fresh_waiting: move || a1.upgrade().is_some_and(|a| a.anything_waiting()),
                    fresh: move |room: &dyn Fn() -> usize| {
                        a2.upgrade()
                            .map(|a| a.relieve_waiting(room))
                            .unwrap_or_default()
                    },
                },
                wake,
                idle_close.clone(),
                runtime.handle(),
            );
        }
    }
    // A kept connection whose hand-over fails once nobody serves on goes to the slow
    // lane, which answers a last request on it, then closes.
    let weak = Arc::downgrade(&acceptor);
    parking.lane_with(Box::new(move |conn, entry| {
        if let Some(a) = weak.upgrade() {
            a.fcgi_to_lane(conn, bytes::BytesMut::new(), Instant::now(), entry);
        }
    }));
    // --max-requests: begin no more requests than the worker will still serve; once
    // accept stops for it, the worker has taken all it will serve: it recycles then.
    if let Some(m) = monitor.clone().filter(|m| m.requests_left().is_some()) {
        // A worker at its limit waits for its successor; held past its limit (the
        // successor failed to start), it accepts again.
        let weak = Arc::downgrade(&acceptor);
        m.on_resume(Box::new(move || {
            if let Some(a) = weak.upgrade() {
                a.resume_after_pause();
            }
        }));
        acceptor.admission.limit_by(m);
    }
    // The --head-timeout of new connections waiting for their first bytes, and the
    // taking of handed-over FastCGI connections, never wait for a free Python thread
    // (or the ASGI loop): the I/O thread does both when none is free.
    runtime.spawn({
        let acceptor = Arc::clone(&acceptor);
        let stop = idle_close.clone();
        async move {
            pending::keep_timeouts(&acceptor.pending, |now| acceptor.expire_waiting(now), stop)
                .await;
        }
    });
    let adopt_stop = CancellationToken::new();
    let mut adopter = handover.map(|channel| {
        runtime.spawn(take_handed_over(
            Arc::clone(&acceptor),
            channel,
            adopt_stop.clone(),
        ))
    });
    let source = Arc::clone(&acceptor) as Arc<dyn crate::wsgi::Source>;
    // Either way the acceptor is the source; an ASGI app's loop returns from `start`
    // only once lifespan startup is complete (no request before it).
    let pool = match asgi {
        None => Serving::Pool(
            sched::batch_policy(settings.sched_batch, || Pool::start(app, settings, source))
                .map_err(ServerError::Runtime)?,
        ),
        Some(a) => Serving::Loop(crate::asgi::start(app, settings, a, source)?),
    };
    let on_ready = match mode {
        Mode::Single { on_ready } | Mode::Worker { on_ready } => on_ready,
    };
    // A worker whose master died stops: the signal that death sends and the
    // supervisor's thread that watches the master say so (crate::stop::master_gone).

    // How the stop cut the requests off, once it did: for what the slow lane queues
    // after, and the count the master is told at the exit.
    let mut cut_why: Option<CutBy> = None;
    let (finished, whole) = runtime.block_on(async {
        // The handler has counted since the process started (a worker: since its
        // fork), so a stop that came while the app was imported is acted on now. Put
        // back: the app may have set a handler of its own meanwhile (the pipe made
        // above is kept, so this fails only for a bad signal number).
        if let Err(e) = crate::stop::install(single) {
            tracing::error!(error = %e, "postern's signal handler could not be put back");
        }
        stops.serving();
        // SIGTERM must reach this thread's handler now, whatever mask the process
        // started with.
        unblock_sigterm();
        // Ready only once the handlers are in place (regression: a SIGHUP sent just
        // after "ready" to a single process was lost under SIG_IGN).
        on_ready();
        let why = stops.first().await;
        // Stopping now (SIGQUIT, the master's stop now): nothing queued or taken from
        // the listen queues from here on starts; it is counted as cut off.
        // regression (review 350): an immediate stop served the listen queue for the
        // moment of its drain, and cut what it started 100 ms later.
        if why == crate::stop::QUIT {
            queue.halt();
        }
        // A stop signal to this worker from someone other than its master is mostly one
        // to the whole process group (systemd's KillMode=control-group, `timeout`),
        // which reaches the master too: it marks the whole server
        // stopping a moment later. That moment is waited for (serving on meanwhile),
        // so that the stop below serves the listen queue rather than leaving it to
        // siblings that are stopping too; a signal to this worker alone (the master
        // then replaces it) only waits the bound.
        // regression (hostile): under `timeout` (a group-wide SIGTERM), about one stop
        // in twenty left every connection waiting in the listen queue to be reset (the
        // workers decided before the master's flag was up), and exited 0.
        if let Some(m) = monitor.as_ref() {
            let signal = why == "SIGTERM" || why == "SIGINT";
            if !single && signal && stops.first_from_elsewhere() && !m.server_stopping() {
                let until = Instant::now() + MASTER_STOP_WAIT;
                while Instant::now() < until
                    && !m.server_stopping()
                    && !crate::stop::orphaned()
                    && !crate::stop::parent_gone()
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        // The master signals its workers just after it shuts the listeners: on a busy
        // machine this worker may see the listeners shut first. Its stop was lost only
        // if no SIGTERM follows within a moment (said before the process exits).
        let lost = (why == crate::stop::LISTENERS_SHUT).then(|| {
            tokio::spawn(async {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if crate::stop::signalled() {
                        return;
                    }
                }
                tracing::warn!("the server is stopping and this worker's listeners were shut down, but its stop never came (did the app or a C extension take SIGTERM?): it stops now");
            })
        });
        if let Some(now) = crate::stop::master_stop_now().filter(|_| why == crate::stop::QUIT) {
            // The master's stop now came before this worker took its SIGTERM.
            tracing::info!(pid = std::process::id(), "the master stops this worker now ({}): stopping without waiting for the requests in flight", now.says());
        } else if why == crate::stop::QUIT {
            tracing::info!("SIGQUIT: stopping now, without waiting for the requests in flight");
        } else if why == crate::stop::MASTER_GONE {
            // The whole server goes: said where operators look (alerts on WARN).
            // regression (probe 385): a master killed (OOM, SIGKILL) left only INFO
            // lines, and the service was gone.
            tracing::warn!(pid = std::process::id(), cause = why, "the master is gone (killed, or it crashed): stopping: no new connections, letting in-flight requests finish; nothing will start another worker: postern must be restarted");
        } else if why == "recycling" || why == crate::stop::LISTENERS_SHUT {
            // No signal began it: none to repeat. With its pid, as the other stop lines:
            // several workers write to one log (review 331: a recycle's line named none).
            tracing::info!(pid = std::process::id(), cause = why, "stopping: no new connections, letting in-flight requests finish");
        } else if !single
            && !stops.first_from_elsewhere()
            && monitor.as_ref().is_some_and(|m| !m.server_stopping())
            && !crate::stop::orphaned()
        {
            // The master's SIGTERM while the server serves on: this worker is replaced.
            // regression (probe 317): it said the same as a whole server's stop, with
            // no pid, so a reload's log read as a stop. Then (probe 329) it never said
            // which of those: the master's mark names it.
            match monitor.as_ref().and_then(|m| m.leaving_cause()) {
                Some(cause) => tracing::info!(
                    pid = std::process::id(),
                    signal = why,
                    cause,
                    "this worker is replaced, stopping: no new connections, letting its in-flight requests finish"
                ),
                None => tracing::info!(
                    pid = std::process::id(),
                    signal = why,
                    "this worker is replaced (a reload, SIGTTOU, a recycle or --timeout), stopping: no new connections, letting its in-flight requests finish"
                ),
            }
        } else {
            tracing::info!(pid = std::process::id(), signal = why, "stopping: no new connections, letting in-flight requests finish (a second signal stops at once)");
        }
        // A worker the master condemned for --timeout is killed at the end of its stack
        // dump: its own deadline comes later, so that the kill comes first, and what it
        // cuts off is named for it (by the master from a WSGI worker's lines, by an
        // ASGI worker's loop as the master's stop now asks), not as cut at
        // --graceful-timeout (an ASGI cut-off there would also end the task past
        // --timeout, and the master would spare the worker).
        let graceful = match monitor.as_ref().and_then(|m| m.condemned_grace()) {
            Some(least) => graceful.max(least),
            None => graceful,
        };
        let deadline = Instant::now() + graceful;
        // What waits for a Python thread, for the master's count of what a kill cut
        // off (the runtime's shutdown ends the task).
        // And once the master condemns this worker for --timeout (now, or later while
        // it drains: a reload, a recycle), each FastCGI request past it whose response
        // has not started is answered 504 just before the kill (`LATE_ANSWER_AFTER`).
        let mut publisher = None;
        if let Some(m) = monitor.clone() {
            let queue = Arc::clone(&queue);
            let parking = Arc::clone(&parking);
            publisher = Some(tokio::spawn(async move {
                // The ids whose answer is on its way: each request once, and a later
                // one that passes the limit too (a worker spared once, condemned
                // again) gets its own.
                let mut timed = std::collections::HashSet::new();
                loop {
                    m.waiting_named(&queue.first_queued(NAMED_WAITING));
                    // With what a stop took out to name (not to be lost from the
                    // master's count; review 362).
                    m.waiting(queue.unstarted());
                    for (id, over) in m.overdue().unwrap_or_default() {
                        if !timed.insert(id.clone()) {
                            continue;
                        }
                        let wait = LATE_ANSWER_AFTER.saturating_sub(over);
                        let (m, parking) = (Arc::clone(&m), Arc::clone(&parking));
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            // Still running (the line still has it): the kill comes.
                            if !m.overdue().unwrap_or_default().iter().any(|(i, _)| *i == id) {
                                return;
                            }
                            let Some(limit) = m.timeout() else { return };
                            // Off the runtime's thread: a send may wait for room on a
                            // connection another response fills.
                            let _ = tokio::task::spawn_blocking(move || {
                                parking.answer_overdue(&[id], limit)
                            })
                            .await;
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        pool.stopping(deadline);
        queue.stop_accepting();
        // An ASGI worker's listeners leave its loop's epoll now, not when the loop
        // next runs: there, exclusive, this worker could take a new connection's one
        // wake-up and then not accept it (`arming`).
        acceptor.admission.arming().stop();
        // This worker takes no more handed-over connections (first: one taken after
        // the waiting ones left would be served here, past --max-requests); its own
        // idle FastCGI keep-alive connections go to the workers that serve on (busy
        // ones once their request has ended), or close when the whole server stops.
        if let Some(channel) = handover {
            channel.unwatch(&*epoll);
        }
        adopt_stop.cancel();
        if let Some(task) = adopter.take() {
            let _ = task.await;
        }
        // Connections that had sent nothing yet go to the workers that serve on, or
        // when none does to the slow lane, which treats them as it treats one that
        // sends nothing at accept (served, or closed when the whole server stops),
        // before the listen queues are drained into it.
        let waiting = acceptor.stop_waiting();
        if waiting > 0 {
            tracing::debug!(waiting, "new connections that sent nothing yet: handed over or to the slow lane");
        }
        let queued = acceptor.hand_on_queued();
        if queued > 0 {
            tracing::debug!(queued, "connections waiting in the listen queue as this worker stopped: handed to the workers that serve on");
        }
        if let Some(m) = &monitor {
            m.stopping();
        }
        // First: a lane task started below must see the stop from its first look, or
        // it would park its idle connection, and a parking that is closed for good
        // closes it at once (no last request).
        // Kept FastCGI connections that linger at the final stop (their answers do not
        // close them: Apache over a Unix socket) are served on while requests come for
        // half the stop's time at most: the rest is left for those requests to end.
        // Set before the stop is seen: a lane task that sees it bounds its waits by it.
        if !parking.hands_over() {
            // Whether the kept TCP connections' peers are nginx (their last answers
            // tell nginx not to cache them): found before answers close them.
            let p = Arc::clone(&parking);
            let _ = tokio::task::spawn_blocking(move || p.warm_peers()).await;
        }
        let now = Instant::now();
        let kept_until = now + deadline.saturating_duration_since(now) / 2;
        parking.set_kept_until(kept_until);
        idle_close.cancel();
        let idle = parking.close_all(kept_until);
        if !idle.is_empty() {
            tracing::debug!(idle = idle.len(), "idle FastCGI keep-alive connections wait a moment for a last request");
        }
        for (conn, entry) in idle {
            acceptor.fcgi_to_lane(conn, bytes::BytesMut::new(), Instant::now(), entry);
        }
        // The whole server stops (a single process, or the master stopping all its
        // workers): new connections are refused (a front server then tries its next
        // upstream), the ones already waiting in the listen queues are served, not
        // reset, and only then do the listeners close. A worker that is replaced
        // (reload, recycling) leaves the shared listeners alone: its siblings and
        // successors keep accepting on them. A worker whose master is gone does as at
        // the whole server's stop: no one will ever serve those listeners again, and a
        // connection left to join their queue during the orphans' drain was reset as
        // the last one exited (regression: nginx 502 after up to --graceful-timeout
        // + 1 s, instead of a refusal it fails over on). A socket systemd passed is
        // left for the next start, and no socket file is touched: a new postern may
        // already listen at that path.
        let mut whole = single
            || crate::stop::orphaned()
            || monitor.as_ref().is_some_and(|m| m.server_stopping());
        if whole {
            // A worker's siblings stop with it: each takes from the shared queues what
            // it can start. A single process takes it all.
            let second_came = stops.second_came();
            let share = (!single).then_some(Share {
                queue: &queue,
                deadline,
                stop_now: &second_came,
            });
            shut_listeners(&acceptor, &listeners, share).await;
            if single {
                socket_files.clear();
            }
            stopping.cancel();
        }
        tracker.close();
        let loop_stop = pool.loop_stop();
        // How many marks the drain gave up on (the front server made no room for them
        // by its deadline; not set when a second signal cut it short).
        let marks_given_up = std::cell::Cell::new(0);
        let drain = async {
            // Requests still being read at --graceful-timeout (an upload under way) are
            // cut off as surely as running ones: the stop is not clean (exit code 1).
            // regression: it exited 0.
            let read_whole =
                tokio::time::timeout_at(deadline.into(), tracker.wait()).await.is_ok();
            if read_whole {
                queue.exit();
            } else {
                // A worker leaving alone (reload, SIGTTOU, recycling) says so: the
                // server does not stop. regression: it said nothing of which.
                let whole = single
                    || crate::stop::orphaned()
                    || monitor.as_ref().is_some_and(|m| m.server_stopping());
                let leaving = if whole {
                    "postern is stopping"
                } else {
                    "this worker is leaving (a reload, SIGTTOU, recycling)"
                };
                // A kept FastCGI connection is read while its request runs (an abort, a
                // request multiplexed onto it): a running request cut off is counted
                // here too. regression (hostile): that one request read as being read.
                tracing::warn!(left = tracker.len(), "requests still being read at --graceful-timeout ({leaving}): cut off (bodies still arriving, or the FastCGI connections of running requests, which are named below)");
                queue.abandon();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let joined = tokio::task::spawn_blocking(move || pool.join(left)).await.unwrap_or(false);
            if !joined {
                // Cut off: what still waits is not started in the moments left.
                queue.halt();
            }
            // No request runs now: a cut response's mark still waiting for room goes
            // out before the runtime (and the task) is dropped; one still waiting at
            // --graceful-timeout is a cut response too (exit code 1). An event loop's
            // cut-off marks its responses as it cuts them, at --graceful-timeout: they
            // get the moment the process's own cuts get below, not a deadline past.
            // regression (review 422, HIGH): closed unmarked at once, mid-record.
            let loop_cut = loop_stop.as_ref().is_some_and(|s| s.cut_tasks() > 0);
            let marks_until = if loop_cut {
                deadline.max(Instant::now() + MARKS_WAIT)
            } else {
                deadline
            };
            let marked = parking.marks_out(marks_until).await;
            if !marked {
                marks_given_up.set(parking.marks_pending());
            }
            joined && read_whole && marked
        };
        let mut drain = std::pin::pin!(drain);
        let mut second = None;
        // At a --timeout kill: the Python threads whose request is past the limit, as
        // the master saw them as it stopped this worker (read at once, not at the cut
        // 100 ms or more later: the same requests the master counted).
        let mut overdue = Vec::new();
        let finished = loop {
            tokio::select! {
                // A drain that has finished wins over a second signal that came as it did.
                biased;
                finished = &mut drain => break finished,
                // A worker that was already leaving (a reload, a recycling, SIGTTOU) when
                // its master died: nobody will serve the listeners again, so it shuts them
                // as above, once it learns of the death. regression: they stayed open, and
                // connections made meanwhile (all workers leaving, a successor still
                // importing) joined the queue and were reset when the last one exited,
                // instead of being refused at once (review LOW).
                () = master_gone(), if !whole => {
                    whole = true;
                    tracing::info!("the master is gone: the listeners refuse new connections");
                    shut_listeners(&acceptor, &listeners, None).await;
                    stopping.cancel();
                }
                // A worker that began its stop alone (a reload, or a group-wide signal
                // that came before the master's mark, past MASTER_STOP_WAIT) and still
                // drains when the whole server stops: it serves the listen queue too.
                () = async {
                    while !monitor.as_ref().is_some_and(|m| m.server_stopping()) {
                        tokio::time::sleep(MASTER_LOOK).await;
                    }
                }, if !whole => {
                    whole = true;
                    tracing::debug!("the whole server stops: the listeners refuse new connections, and what waits in their queue is served");
                    // (It takes the whole queue, not a share as its siblings do: its
                    // threads may be past taking from a share. Left open (review 391):
                    // what it cannot start before its --graceful-timeout is cut off.)
                    shut_listeners(&acceptor, &listeners, None).await;
                    stopping.cancel();
                }
                name = stops.second() => {
                    second = Some(name);
                    if crate::stop::master_stop_now() == Some(crate::stop::StopNow::Timeout) {
                        overdue = monitor.as_ref().map(|m| m.overdue_lines()).unwrap_or_default();
                    }
                    // Stopping now: nothing queued starts in the moment left.
                    queue.halt();
                    if let Some(now) = crate::stop::master_stop_now().filter(|_| why != crate::stop::QUIT) {
                        tracing::warn!(pid = std::process::id(), "the master stops this worker now ({}): without waiting for its requests", now.says());
                    } else if name != crate::stop::QUIT || why != crate::stop::QUIT {
                        tracing::warn!(signal = name, "second signal: stopping now, without waiting for requests");
                    }
                    // An ASGI worker's loop cuts its requests off now, as at
                    // --graceful-timeout: each task is cancelled and named with its
                    // access line (its FastCGI response cut and marked), rather than
                    // dying unnamed with the process. At a --timeout kill too (the
                    // task past it answered 504): the master names only what a
                    // blocked loop leaves on the scoreboard, at the exit or the kill.
                    // regression (probe 355): at a --timeout kill the master named
                    // the 16 tasks its scoreboard showed; of 40 streams, 25 were cut
                    // off without a line or a count.
                    if let Some(stop) = loop_stop.as_ref() {
                        stop.cut_now(stopped_by(why, Some(name)));
                        let asked = Instant::now();
                        while !stop.cut_over() && asked.elapsed() < LOOP_CUT_WAIT {
                            // A loop that has not taken it by now is blocked (a sync
                            // call in a task): waiting on would only leave the FastCGI
                            // marks less of the master's 1.5 s (review 354).
                            if !stop.cut_taken_yet() && asked.elapsed() >= LOOP_TAKE_WAIT {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    // Nothing may have been running (two signals close together): a drain
                    // that ends within a moment cut nothing off.
                    // regression: an idle server stopped by two quick signals said it had
                    // cut requests off (exit 1).
                    // What the halt left in the queue, or in the slow lane, is cut
                    // off too.
                    break tokio::time::timeout(Duration::from_millis(100), &mut drain)
                        .await
                        .unwrap_or(false)
                        && queue.queued() == 0
                        && queue.lane_tasks() == 0;
                }
            }
        };
        // The requests the Python threads still run are named, each in its span, with
        // how far its response got, and get their access lines (marked incomplete):
        // their threads will never write them. Over uwsgi or SCGI the front server
        // may see a clean end after part of the body: this is their only trace.
        // regression: only a count and a generic line said a stop cut them off.
        if !finished {
            // The master's stop now says its own reason (a second signal to it).
            let master_now = crate::stop::master_stop_now();
            let by = stopped_by(why, second);
            // A worker that left alone (a reload) may see the whole server stop since.
            // regression: it said "this worker is leaving" as postern stopped.
            whole |= crate::stop::orphaned()
                || monitor.as_ref().is_some_and(|m| m.server_stopping());
            let leaving = if whole {
                "postern is stopping"
            } else {
                "this worker is leaving (a reload, SIGTTOU, recycling)"
            };
            // Condemned for --timeout, the master named a WSGI worker's requests (and
            // what waited) as it stopped it; an ASGI worker's loop names its own.
            // Named or not, each gets its access line and is counted here.
            let named = master_now == Some(crate::stop::StopNow::Timeout) && loop_stop.is_none();
            let why = format!("{by} ({leaving})");
            // How many the Python threads' requests were: the master counts them in the
            // cut (its exit code) and, so told, neither names nor counts them again.
            let wsgi_cut = crate::wsgi::inflight::cut_off(&crate::wsgi::inflight::Cut {
                why: (!named).then_some(why.as_str()),
                timeout: monitor.as_ref().and_then(|m| m.timeout()),
                overdue: &overdue,
                monitor: monitor.as_deref(),
            });
            // Published now: what a worker took from the listen queue in its last
            // moments (at --graceful-timeout, when it stops sharing the queue) would
            // wait for the next 50 ms look, after the exit. regression (review 320):
            // "2 requests running" where 6 more were cut off before they started.
            // The 50 ms looks end here: one after the sweep below would publish a
            // queue emptied or lines cleared (review 363); past the cut, its answers
            // for --timeout have no more use.
            if let Some(p) = publisher.take() {
                p.abort();
            }
            // What waited in the queue, named here, each with its access line (the
            // master names them only at a --timeout kill, from its lines), and closed
            // as never answered; in the same look, the requests whose body was still
            // being read. What the slow lane queues later is named as the runtime has
            // shut down.
            let (taken, reading) = queue.sweep();
            // What was cut off that no scoreboard line shows, for the master's count
            // (and its exit code): an ASGI loop's cancelled tasks (their lines clear as
            // they end: the master takes the larger count), and requests whose body
            // was still being read (an upload: on no line, added). Not the lane tasks
            // of kept FastCGI connections whose requests run or wait: they are on
            // lines or in the queue.
            // regression (probe 355): an upload cut by SIGQUIT left the stop's exit 0.
            // regression: 1 request running and 3 queued on kept FastCGI connections
            // read "4 requests running and 3 accepted" (review 366: and a running
            // request beside a cut upload was counted once for both).
            let loop_cut = loop_stop.as_ref().map_or(0, |s| s.cut_tasks()) + wsgi_cut;
            if let Some(m) = &monitor {
                m.tasks_cut(loop_cut, reading);
                let first: Vec<_> = taken
                    .iter()
                    .take(NAMED_WAITING)
                    .map(crate::wsgi::Request::named)
                    .collect();
                m.waiting_named(&first);
                m.waiting(queue.unstarted());
            }
            let told = taken.len();
            let unnamed =
                crate::wsgi::inflight::never_started(taken, (!named).then_some(why.as_str()), 0);
            if !named {
                if let Some(m) = &monitor {
                    // Not named nor counted again by the master if it has to kill this
                    // worker.
                    m.waiting_named(&[]);
                    m.waiting_told(told);
                }
            }
            cut_why = Some(CutBy {
                why,
                named,
                told,
                stop: loop_stop.clone(),
                wsgi_cut,
            });
            if unnamed > 0 && !named {
                tracing::warn!(
                    requests = unnamed,
                    "more requests were still waiting for their turn (never started) when the running ones were cut off {by} ({leaving}), besides those named: their connections close without an answer (the front server answers 502, or retries them on its next upstream)"
                );
            }
        }
        // Requests still running: the exit would close their FastCGI connections
        // plainly, which nginx may take for their responses' end. They are cut first,
        // their marks given a moment (the master kills a worker a second past
        // --graceful-timeout).
        // (Those an event loop's cut-off cut and marked already are no longer listed:
        // their marks may still wait. regression (review 422, HIGH): the worker exited
        // without waiting for them, and closed those responses unmarked, mid-record.)
        // (Not again for those the drain gave up on: review 423, a second wait and a
        // second "closed unmarked" line for marks the front server never made room for.
        // Marks begun since, an event loop's late cut-off, are waited for: review 424.)
        if !finished
            && (parking.cut_responding() > 0 || parking.marks_pending() > marks_given_up.get())
        {
            let _ = parking.marks_out(Instant::now() + MARKS_WAIT).await;
        }
        if let Some(task) = lost {
            let _ = task.await;
        }
        (finished, whole)
    });
    let handed = parking.handed();
    if handed > 0 {
        tracing::info!(
            handed,
            "idle FastCGI keep-alive connections handed over to the serving workers"
        );
    }
    if !finished {
        // regression: a worker leaving alone (a reload) said "when postern stopped".
        let when = if whole {
            "when postern stopped"
        } else {
            "when this worker left (a reload, SIGTTOU, recycling)"
        };
        // regression (probe 329): a worker serving uwsgi alone named FastCGI too.
        // regression (probe 381): an event loop blocked with no request in flight (a
        // heartbeat kill) said requests still ran.
        let blocked = cut_why
            .as_ref()
            .and_then(|c| c.stop.as_ref())
            .is_some_and(|s| !s.cut_taken_yet());
        let what = if blocked {
            "the event loop still blocked (it never took the stop: what it runs is named by the master)"
        } else if parking.cut_responding() > 0 {
            "requests still running, or cut FastCGI responses still unmarked"
        } else {
            "requests still running"
        };
        match crate::stop::master_stop_now() {
            Some(now) => tracing::warn!(
                pid = std::process::id(),
                "{what}, when the master stopped this worker at once ({})",
                now.says()
            ),
            None => {
                tracing::warn!(
                    pid = std::process::id(),
                    "{what}, {when} (--graceful-timeout, a second signal or SIGQUIT)"
                )
            }
        }
    }
    // The clients counted at --head-timeout since the last summary are said now:
    // the task that would say them at the window's end goes with the runtime.
    slow_clients::flush();
    // What the exit cuts off now, counted again (the sweep's count stands for a worker
    // killed before this): uploads still being read (not those queued, refused or
    // ended since the sweep, and those begun after it), the loop's cut tasks.
    // regression (review 367): the sweep's count was kept, give or take the requests
    // queued since.
    if let (Some(c), Some(m)) = (&cut_why, &monitor) {
        m.tasks_cut(c.cut(), queue.reading());
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    // Queued by the slow lane after the stop named what waited (a body that came
    // whole during the FastCGI marks' wait): no task is left to queue more.
    // regression (review 362): closed at the exit, unnamed, without an access line.
    // Named even after a --timeout kill: the master named what waited before these.
    if let Some(CutBy {
        why, named, told, ..
    }) = cut_why
    {
        let late = queue.take_all();
        if !late.is_empty() {
            let n = late.len();
            let unnamed = crate::wsgi::inflight::never_started(late, Some(why.as_str()), told);
            if let Some(m) = &monitor {
                m.waiting(queue.unstarted());
                // At a --timeout kill the master named the first ones itself.
                m.waiting_told(if named { n } else { told + n });
            }
            if unnamed > 0 {
                tracing::warn!(
                    requests = unnamed,
                    "more requests were still waiting for their turn (never started) when the running ones were cut off {why}, besides those named: their connections close without an answer (the front server answers 502, or retries them on its next upstream)"
                );
            }
        }
    }
    Ok(finished)
}

/// What cut a stopping worker's requests off (`why`: its first stop signal; `second`:
/// the one that stopped it at once, if any), as its lines say it: "by SIGQUIT".
fn stopped_by(why: &str, second: Option<&str>) -> String {
    if let Some(now) = crate::stop::master_stop_now() {
        return format!("by {}", now.says());
    }
    match second {
        _ if why == crate::stop::QUIT => "by SIGQUIT".to_owned(),
        Some(name) => format!("by a second signal ({name})"),
        None => "at --graceful-timeout".to_owned(),
    }
}

/// The whole server stops (or nobody is left to serve these listeners): new
/// connections are refused (a front server then tries its next upstream), the ones
/// already waiting in the listen queues are served, not reset, and only then do the
/// listeners close. See the stop sequence in [`run`].
async fn shut_listeners(acceptor: &Acceptor, listeners: &[Listener], share: Option<Share<'_>>) {
    // A socket systemd passed (socket activation) stays with systemd, which
    // queues connections for the next start: it is only drained, never shut.
    for l in listeners.iter().filter(|l| !l.inherited) {
        if let Err(e) = listener::refuse_new_connections(&l.sock, l.tcp) {
            tracing::warn!(listener = %l.label, error = %e, "cannot make the listener refuse new connections; closing it after the queue is served");
        }
    }
    let (mut queued, end) = match share {
        Some(share) => share_backlog(acceptor, share).await,
        None => (0, ShareEnd::Empty),
    };
    // A worker whose master is gone has nobody to leave the queue to: it takes it as
    // before (each cut off, named, with its access line). regression (review 391): left
    // there, it was reset unsaid as the last orphan exited.
    if end == ShareEnd::CutShort && !crate::stop::orphaned() {
        // The stop's end (--graceful-timeout, a second signal, SIGQUIT): nothing more
        // is taken from the listen queues to be cut off unserved, and the listeners are
        // left as they are (shutting one resets what waits in it): the master takes
        // what is still there once its workers are gone, closes it and counts it
        // (`connections still waiting in the listen queue, closed unanswered`). What a
        // leaving worker handed over is this worker's to answer or cut.
        // regression (probe 390): at SIGQUIT and at --graceful-timeout the workers took
        // the whole queue, said `serving connections that were waiting in the listen
        // queue`, and cut each off as a request read and waiting for its turn.
        let handed = acceptor.adopt_all();
        if queued + handed > 0 {
            tracing::debug!(queued, handed, "taken before the stop's end");
        }
        return;
    }
    if end == ShareEnd::Starved {
        // Out of descriptors: this worker can take nothing, and shutting the listeners
        // it shares would reset the connections its siblings are to serve; they shut
        // them (the sockets close here with the process).
        // regression (review 324): over a Unix listener (which cannot say it is empty
        // but by an accept) such a worker looked until --graceful-timeout, with an
        // "out of file descriptors" ERROR each second.
        tracing::warn!("out of file descriptors at the stop: this worker leaves the requests still waiting in the listen queue to the other workers");
        return;
    }
    queued += acceptor.drain_backlog();
    // What waits in the hand-over channel (connections a recycled worker
    // handed on, their request possibly sent and unread) is served here too:
    // the worker it was meant for may be stopping as well (a successor still
    // booting), and the channel closes with the master.
    // regression: requests reset at a stop during a recycled worker's
    // successor's boot (review-f4b).
    let handed = acceptor.adopt_all();
    if handed > 0 {
        tracing::info!(
            handed,
            "connections a leaving worker handed over: their requests are answered, then they close"
        );
    }
    // A handshake under way as the filter went on still completes into the
    // queue (TCP_DEFER_ACCEPT: once its request arrives); give it a few round
    // trips before the listeners close and would reset it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    queued += acceptor.drain_backlog();
    for l in listeners.iter().filter(|l| !l.inherited) {
        let _ = l.sock.shutdown(std::net::Shutdown::Both);
    }
    queued += acceptor.drain_backlog();
    if queued > 0 {
        if crate::stop::quitting() || end == ShareEnd::CutShort {
            // A single process at SIGQUIT, or an orphan at its stop's end: nobody else
            // will close them. regression (review 391): said "serving" for requests
            // then cut off, each `before it started`.
            tracing::warn!(
                queued,
                "connections that were waiting in the listen queue taken at the stop's end: each is cut off unserved (named below)"
            );
        } else {
            tracing::info!(
                queued,
                "serving connections that were waiting in the listen queue"
            );
        }
    }
}

/// How a worker whose siblings stop with it serves the shared listen queues: see
/// [`share_backlog`].
struct Share<'a> {
    queue: &'a Queue,
    /// `--graceful-timeout`'s end: what still waits then is left to the master (taken,
    /// closed and counted once the workers are gone).
    deadline: Instant,
    /// A second signal came (SIGQUIT too): stop sharing; what waits is the master's.
    stop_now: &'a dyn Fn() -> bool,
}

/// How a worker's stop cut its requests off ([`run`]).
struct CutBy {
    /// What cut them off, for their lines.
    why: String,
    /// The master names what waited then (a --timeout kill).
    named: bool,
    /// How many of those waiting the master was told of.
    told: usize,
    /// The ASGI loop's stop, if any: its cancelled tasks.
    stop: Option<Arc<crate::asgi::Stop>>,
    /// The Python threads' requests it cut off.
    wsgi_cut: usize,
}

impl CutBy {
    /// What was cut off that no scoreboard line shows: the loop's cancelled tasks
    /// and the Python threads' requests (the count the monitor's `tasks_cut` takes).
    fn cut(&self) -> usize {
        self.stop.as_ref().map_or(0, |s| s.cut_tasks()) + self.wsgi_cut
    }
}

/// Why [`share_backlog`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShareEnd {
    /// The listen queues hold nothing more (as far as this worker can tell).
    Empty,
    /// Out of descriptors: this worker can take nothing.
    Starved,
    /// `--graceful-timeout` passed, or a second signal (SIGQUIT) came: what waits is
    /// not this worker's to take.
    CutShort,
}

/// How often a stopping worker with no thread free looks whether its listen queues
/// still hold connections for it (review 320: every 2 ms cost a busy worker 1.5% of a
/// core for the stop); a thread that comes free wakes it at once.
const SHARE_LOOK: Duration = Duration::from_millis(10);

/// The workers of a stopping server serve the listen queues they share together: each
/// takes a connection only while it has a thread (or an ASGI place) free for it, so
/// that a worker busy with a long request does not take what an idle sibling would
/// serve at once. Returns, with how many it took, once it found every queue empty (a
/// Unix listener tells only by an accept, so a worker with no room waits for some),
/// at the deadline, or at a second signal; the caller then takes whatever is left
/// (the connections a handshake completed into the queue meanwhile).
/// regression (probe 317): at a stop the first worker to drain took the whole queue
/// while its idle siblings exited: 6 short requests waited behind an 8 s one and
/// were cut off at --graceful-timeout (502), 10 of 24 with 4 workers.
async fn share_backlog(acceptor: &Acceptor, share: Share<'_>) -> (usize, ShareEnd) {
    let mut taken = 0;
    // A connection taken whose request is not whole yet (its body still arriving) goes
    // to the slow lane, not to the queue: it holds a thread's place all the same.
    // regression (review 320): six uploads whose bodies came late all went to one
    // worker (room stayed 1), which cut three off at --graceful-timeout.
    let lane_before = share.queue.lane_tasks();
    loop {
        if (share.stop_now)() || Instant::now() >= share.deadline {
            return (taken, ShareEnd::CutShort);
        }
        let in_lane = share.queue.lane_tasks().saturating_sub(lane_before);
        let room = share.queue.room().saturating_sub(in_lane);
        if room > 0 {
            let (n, left) = acceptor.drain_backlog_up_to(room, true);
            taken += n;
            match left {
                Backlog::Empty => return (taken, ShareEnd::Empty),
                Backlog::Starved => return (taken, ShareEnd::Starved),
                Backlog::MayHoldMore if n > 0 => continue,
                Backlog::MayHoldMore => {}
            }
        }
        if !acceptor.backlog_may_wait() {
            return (taken, ShareEnd::Empty);
        }
        // Woken at once when a thread or a place comes free; the look bounds the wait
        // for a queue a sibling emptied. regression (own measure): with a fixed 10 ms
        // sleep, 300 queued requests took 1.7 s more to serve at a stop.
        let _ = tokio::time::timeout(SHARE_LOOK, share.queue.room_grew()).await;
    }
}

/// When the stop answers a FastCGI request past `--timeout` whose response has not
/// started (`fastcgi::Parking::answer_overdue`): this long after the request passed the
/// limit, on its own clock (its scoreboard line's start, which the master's look reads
/// too). The master condemns the worker as the request passes the limit and kills it
/// 500 ms later (the stack dump's time), unless the request ended meanwhile, and then
/// spares it: answered at once, a request that ends during the dump would have its
/// app's answer replaced by the 504; answered here, only one that ends in the last
/// 100 ms of it.
const LATE_ANSWER_AFTER: Duration = Duration::from_millis(400);

/// Requests read whole and not started that a stopping worker names to its master
/// (the scoreboard's waiting lines), beyond its count of them.
const NAMED_WAITING: usize = 4;

/// How often a worker that is leaving while its master lives looks whether the
/// master is gone (only during its drain).
const MASTER_LOOK: Duration = Duration::from_millis(50);

/// How long a worker whose stop signal did not come from its master waits for the
/// master to mark the whole server stopping (`Monitor::server_stopping`).
const MASTER_STOP_WAIT: Duration = Duration::from_millis(500);

/// Returns once this worker's master is gone ([`crate::stop::orphaned`]).
async fn master_gone() {
    while !crate::stop::orphaned() {
        tokio::time::sleep(MASTER_LOOK).await;
    }
}

/// How long a handed-over FastCGI connection is left to the Python threads before the
/// I/O thread takes it: a free one takes it within microseconds.
const HANDOVER_GRACE: Duration = Duration::from_millis(50);

/// The I/O thread's share of taking the FastCGI connections leaving workers hand over
/// (fastcgi::handover). A free Python thread takes them first (the channel is in
/// their epoll, so they go to a worker with a thread free); what is still in the
/// channel [`HANDOVER_GRACE`] after it became readable is taken here. Before, with
/// every Python thread of every serving worker busy, a never-served connection stayed
/// in the channel past its `--head-timeout` (and a kept one's next request waited
/// there unread).
async fn take_handed_over(
    acceptor: Arc<Acceptor>,
    channel: &'static fastcgi::handover::Channel,
    stop: CancellationToken,
) {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the channel is the process's (a static, never dropped): its descriptor
    // stays open and the same for as long as this AsyncFd lives.
    let fd = match unsafe {
        AsyncFd::register_with_interest(channel.receiver(), Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "the I/O thread cannot wait on the FastCGI hand-over channel; only the Python threads take handed-over connections");
            return;
        }
    };
    loop {
        let mut ready = tokio::select! {
            r = fd.readable() => match r {
                Ok(r) => r,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(HANDOVER_GRACE) => {}
            _ = stop.cancelled() => return,
        }
        let taken = acceptor.adopt_all();
        if taken > 0 {
            tracing::debug!(
                taken,
                "handed-over FastCGI connections taken by the I/O thread (no Python thread free)"
            );
        }
        // Only clears what was seen before this look: a message sent since makes the
        // next wait return at once.
        ready.clear_ready();
    }
}

/// What runs the app: the WSGI threads or the ASGI event loop thread.
enum Serving {
    Pool(Pool),
    Loop(crate::asgi::Running),
}

impl Serving {
    /// The stop began; it has until `deadline` (`--graceful-timeout`).
    fn stopping(&self, deadline: Instant) {
        if let Serving::Loop(l) = self {
            l.stopping(deadline);
        }
    }

    fn join(self, limit: Duration) -> bool {
        match self {
            Serving::Pool(p) => p.join(limit),
            Serving::Loop(l) => l.join(limit),
        }
    }

    /// The event loop's stop (an ASGI worker), for an immediate stop's cut-off.
    fn loop_stop(&self) -> Option<Arc<crate::asgi::Stop>> {
        match self {
            Serving::Pool(_) => None,
            Serving::Loop(l) => Some(l.stop()),
        }
    }
}

/// How long an immediate stop waits for the event loop's cut-off (the cancelled tasks
/// end, each with its access line) before the worker exits: within the master's 1.5 s
/// before its kill, with the drain's 100 ms and the FastCGI marks' 500 ms after it.
const LOOP_CUT_WAIT: Duration = Duration::from_millis(500);
/// How long the marks of responses cut as the process leaves may wait for room (the
/// master kills a stopping worker a second past --graceful-timeout).
const MARKS_WAIT: Duration = Duration::from_millis(500);
/// How long an immediate stop waits for the event loop to take its cut-off at all.
const LOOP_TAKE_WAIT: Duration = Duration::from_millis(250);

/// Unblocks SIGTERM for the calling thread. libc, not rustix: rustix has no
/// thread signal mask outside its unstable `runtime` API.
fn unblock_sigterm() {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}
