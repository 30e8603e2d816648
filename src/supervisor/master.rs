//! The master's side: forks workers, reaps them, replaces them, reloads, stops.
//!
//! One single-threaded loop that sleeps in poll(2) until something happens: a signal
//! (the signalfd; SIGCHLD says a child exited), a worker's status pipe (ready, or
//! recycling itself), a change in the `--touch-reload` file's directory (inotify), or
//! the next deadline (a `--timeout` kill, `--max-lifetime`, a request that could pass
//! `--timeout`/`--slow-log`, a respawn backoff). With none of these configured and
//! nothing under way, it makes no system call at all.
//!
//! Deadlines are `std::time::Instant`s (libc's clock_gettime): rustix's own vDSO
//! lookup reads memory valgrind does not map, and the master must run under valgrind.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use super::phase::{self, Departed, Fleet, Phase, Verdict};
use super::scoreboard::{self, Hold, Scoreboard, WAITING_LINES};
use super::signals::{self, SigSet, SignalFd};
use super::touch::TouchReload;
use super::{
    notify, report, worker, GenerationSettings, Options, Reread, Stats, SupervisorError,
    WorkerContext, MAX_SLOTS,
};
use crate::stats::Cause;
use crate::stop::StopNow;

/// How long a worker over `--timeout` has to dump its stacks before SIGKILL.
pub(super) const DUMP_GRACE: Duration = Duration::from_millis(500);
/// How long a worker the stop asked to stop at once ([`Worker::stop_now`]) has to cut
/// and mark its responses and exit before it is killed: its own stop now gives the
/// marks 500 ms, the drain before them 100 ms, and an ASGI worker's loop 500 ms before
/// that to cut its tasks off (250 ms when the loop is blocked and does not take it).
const QUIT_GRACE: Duration = Duration::from_millis(1500);
/// The `--stats` helper is restarted at most this often.
const STATS_RESTART: Duration = Duration::from_secs(1);
/// A worker that could not be started (fork, its pipe, no slot) is tried again after
/// 1 s, doubling up to this: the workers serve on meanwhile, and a reload whose fork
/// failed completes within this of the resource coming back, for at most 12 error
/// lines a minute.
const SPAWN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long past `--graceful-timeout` the master waits for a worker told to leave
/// before it kills it (its own stop ends at `--graceful-timeout`, then it exits).
const LEAVE_MARGIN: Duration = Duration::from_secs(1);

/// A worker still starting this long (or half `--worker-start-timeout`, if that is
/// sooner) is logged: one warning, its import may hang. Past `--worker-start-timeout`,
/// while others serve once the first start is over (a reload, a replacement), it is
/// killed and its start counts as failed: an import that hangs (a connect without a
/// timeout) would otherwise hold a reload, and systemd's reload, for ever.
const BOOT_WARN: Duration = Duration::from_secs(30);

/// How a request a kill cuts off is named when its response had not gone out whole:
/// `name_running` takes it back for one whose line says it had.
const FRONT_GETS_ERROR: &str = "; its front server gets an error";

/// A running worker as the master tracks it.
struct Worker {
    pid: Pid,
    generation: u64,
    /// The master's end of the socket pair the worker writes to once it serves (and
    /// when it recycles itself), and the master to wake it ([`Worker::nudge`]); closed
    /// at EOF.
    status: Option<OwnedFd>,
    phase: Phase,
    started: Instant,
    slot: usize,
    /// Requests whose stacks were already dumped for --slow-log: (thread, since).
    dumped: Vec<(usize, u64)>,
    /// What passed --timeout: the worker is killed at the end of the dump only if it
    /// still holds ([`Condemned`]).
    condemned_for: Option<Condemned>,
    /// Under `--timeout`: its heartbeat found older than [`silent_after`], and when
    /// (it is condemned if that same beat is still its last [`SILENT_CONFIRM`] later).
    silent: Option<(u64, Instant)>,
    /// Its ready byte arrived: it took requests (one that never did cuts none off).
    served: bool,
    /// It was sent SIGTERM: a second one would read as "stop now" and cut its
    /// requests off.
    termed: bool,
    /// When it was told to leave (its SIGTERM, or the master saw it recycle itself):
    /// still running past `--graceful-timeout` from then, it is killed (`watch`).
    /// None again once killed.
    told: Option<Instant>,
    /// The master sent it SIGKILL (at the stop, for --timeout, or past its leave
    /// deadline).
    sigkilled: bool,
    /// That SIGKILL was for running past --graceful-timeout (its exit counts as
    /// `killed` in the metrics).
    late: bool,
    /// The stop asked it to stop at once ([`Worker::stop_now`]).
    quit: Option<Quit>,
    /// Killed before a stop began: its exit does not make the stop unclean.
    before_stop: bool,
    /// Said once that it is still starting after [`BOOT_WARN`].
    slow_boot_said: bool,
    /// The master killed it at `--worker-start-timeout` (its exit says so, not "the
    /// app's error is logged above").
    start_timed_out: bool,
    /// ... while no worker served ([`phase::Departed::timed_out_alone`]).
    timed_out_alone: bool,
    /// Killed at the stop while it still imported the app, others serving the listen
    /// queues: it had accepted nothing, so its kill cut nothing off.
    abandoned: bool,
    /// Its successor was started (near `--max-requests`, over `--max-rss`, past
    /// `--max-lifetime`), and when: it serves on until a successor serves (then the
    /// master tells it to leave, for that cause). A successor that hangs is killed at
    /// `--worker-start-timeout` and started again, as one that fails: meanwhile the
    /// worker serves on (`hold_while_starts_fail`).
    /// regression: it left at `--worker-start-timeout` anyway, as its successor was
    /// killed: with `--workers 1` nothing served.
    outgoing: Option<(Cause, Instant)>,
    /// Started in place of a reload's worker killed by a signal during its import: if
    /// it is killed too, the reload fails.
    retry: bool,
    /// Its generation's options: the limits the master holds it to (`--timeout`,
    /// `--slow-log`, `--graceful-timeout`), which a reload may have changed for the
    /// workers it starts, not for those already running.
    opts: Arc<Options>,
}

impl Worker {
    /// A worker just forked into `slot`, importing the app.
    fn new(
        pid: Pid,
        generation: u64,
        slot: usize,
        status: Option<OwnedFd>,
        opts: Arc<Options>,
    ) -> Worker {
        Worker {
            pid,
            generation,
            status,
            phase: Phase::Booting,
            started: Instant::now(),
            slot,
            dumped: Vec::new(),
            condemned_for: None,
            silent: None,
            served: false,
            termed: false,
            told: None,
            sigkilled: false,
            late: false,
            quit: None,
            before_stop: false,
            slow_boot_said: false,
            start_timed_out: false,
            timed_out_alone: false,
            abandoned: false,
            outgoing: None,
            retry: false,
            opts,
        }
    }

    /// Part of the serving generation and not on its way out (nor serving on only
    /// until its successor does).
    fn current(&self, generation: u64) -> bool {
        self.generation == generation && self.phase.active() && self.outgoing.is_none()
    }

    /// Asks the worker to finish its requests and exit (SIGTERM), for `cause`. Once: a
    /// worker already draining (a reload's booting worker dropped by the next reload,
    /// then again by its rollback) would read a second SIGTERM as "stop now".
    fn drain(&mut self, board: &Scoreboard, cause: Cause) {
        self.mark_retiring(board, cause);
        self.nudge();
        self.term();
    }

    /// SIGTERM, once.
    fn term(&mut self) {
        if !self.termed {
            self.termed = true;
            self.told.get_or_insert_with(Instant::now);
            signal(self.pid, Signal::TERM);
        }
    }

    /// A worker condemned for --timeout ends, by the master's SIGKILL or by its own
    /// --graceful-timeout (its stop began with the dump): its other requests die with
    /// it. Each is named, with the front server's id, so that its 502 can be traced
    /// (the worker writes no access line for its running ones).
    // regression: with --graceful-timeout under the dump's 500 ms the worker ended by
    // itself first, and only the kill named them: they were cut off unnamed.
    fn name_cut_offs(&self, board: &Scoreboard) {
        self.name_cut_offs_as(board, &self.killed_for(), true);
    }

    /// What its `--timeout` kill cuts its other requests off for, as their lines say.
    fn killed_for(&self) -> String {
        let why = self
            .condemned_for
            .map_or("another request's --timeout", Condemned::cause);
        format!("its worker is killed for {why}")
    }

    /// The requests a worker that died on its own (`how`) was running, each named.
    fn name_running_at_death(&self, board: &Scoreboard, how: &str) {
        self.name_running(
            board,
            None,
            &format!("its worker died ({how}) while running it{FRONT_GETS_ERROR}"),
            false,
        );
    }

    /// Each request the worker runs (but the one it is condemned for: `skip`), with
    /// `what` happened to it; `timeout_kill`: the worker is killed for a request's
    /// `--timeout` (each one past it too says so).
    fn name_running(
        &self,
        board: &Scoreboard,
        skip: Option<Condemned>,
        what: &str,
        timeout_kill: bool,
    ) {
        let now = super::scoreboard::now_ns();
        for t in 0..board.threads {
            let line = board.line(self.slot, t);
            let since = line.since.load(Ordering::Acquire);
            if since == 0 || skip == Some(Condemned::Request(t, since)) {
                continue;
            }
            let ran = Duration::from_nanos(now.saturating_sub(since));
            // Past the limit too (requests that came together and hang together):
            // not only another's.
            // regression (probe 361): such a request, answered 504 over FastCGI for
            // its own --timeout, was named as cut off for another request's.
            let too = match (skip, self.opts.timeout) {
                (Some(Condemned::Request(..)), Some(limit)) if timeout_kill && ran > limit => {
                    format!(
                        "; it had passed --timeout ({}s) itself",
                        limit.as_secs_f64()
                    )
                }
                _ => String::new(),
            };
            // What the client got, where the line knows (a response sent whole at its
            // Content-Length; without one, or over FastCGI, once postern ended it).
            // regression (review 403): a response sent whole, the app still in its
            // close(), was said to leave its front server with an error.
            let (what, got) = match line.answered_whole() {
                Some((status, bytes)) => (
                    what.strip_suffix(FRONT_GETS_ERROR).unwrap_or(what),
                    format!(
                        "; its response had been sent whole ({status}, {bytes} bytes with its head): the client has it"
                    ),
                ),
                None => (what, String::new()),
            };
            tracing::warn!(
                pid = raw(self.pid),
                request = %crate::logging::Untrusted(line.desc().as_bytes()),
                request_id = %line.request_id(),
                ran_ms = ran.as_millis() as u64,
                "request cut off: {what}{too}{got}"
            );
        }
    }

    /// [`Worker::name_cut_offs`] for a kill for `why` (a second signal, SIGQUIT: the
    /// worker cannot name them itself).
    // regression: a stop's second signal killed a worker's requests unnamed.
    fn name_cut_offs_for(&self, board: &Scoreboard, why: &str) {
        self.name_cut_offs_as(board, &format!("its worker is killed for {why}"), false);
    }

    /// What the worker ran and had waiting, each named: cut off because `its` ("its
    /// worker is killed for ...").
    fn name_cut_offs_as(&self, board: &Scoreboard, its: &str, timeout_kill: bool) {
        self.name_running(board, self.condemned_for, its, timeout_kill);
        // What it had read whole and not started (published by its stop, which began
        // with the dump) dies too: the first few are named (its waiting lines), the
        // rest counted. One started since its publication is on a running line, named
        // above: not twice.
        // Less those the worker named itself as its stop cut them off (review 363).
        let waiting = board
            .waiting(self.slot)
            .saturating_sub(board.waiting_told(self.slot));
        let mut named = 0;
        for i in 0..WAITING_LINES {
            let line = board.waiting_line(self.slot, i);
            if named == waiting || line.since.load(Ordering::Acquire) == 0 {
                continue;
            }
            let id = line.request_id();
            let running = (0..board.threads).any(|t| {
                let l = board.line(self.slot, t);
                l.since.load(Ordering::Acquire) != 0 && l.request_id() == id
            });
            if running {
                continue;
            }
            named += 1;
            tracing::warn!(
                pid = raw(self.pid),
                request = %crate::logging::Untrusted(line.desc().as_bytes()),
                request_id = %id,
                "request cut off: {its} before it started it (it had been read and waited for the app; its front server gets an error)"
            );
        }
        let more = waiting - named;
        if more > 0 {
            let besides = if named > 0 {
                " besides those named"
            } else {
                ""
            };
            tracing::warn!(
                pid = raw(self.pid),
                waiting = more,
                "requests cut off{besides}: {its} before it started them (they had been read and waited for the app; their front server gets an error)"
            );
        }
    }

    /// Over --timeout (a request past it, or its event loop blocked): its stacks are
    /// dumped (SIGUSR2), its replacement is started, and it is killed at the end of the
    /// dump (returned), whatever it was doing before.
    fn condemn(
        &mut self,
        board: &Scoreboard,
        why: Condemned,
        pending: &mut VecDeque<Cause>,
    ) -> Instant {
        signal(self.pid, Signal::USR2);
        // The others past the limit by the kill are counted then (`kill_or_spare`).
        board.count_timeout(1);
        if self.phase.active() {
            pending.push_back(Cause::Timeout);
        }
        let kill_at = Instant::now() + DUMP_GRACE;
        self.phase.condemn(kill_at);
        self.condemned_for = Some(why);
        board.mark_draining(self.slot, Cause::Timeout);
        // Its stop begins now, while the stacks are dumped: it takes no more, and
        // hands its idle kept FastCGI connections and the new connections that sent
        // nothing yet to the workers that serve on (its replacement is on its way),
        // so the requests a front server sends on them meanwhile are served there, not
        // reset by the kill. (An ASGI loop blocked by the request does not stop this:
        // the stop runs on the worker's I/O thread.) Its own deadline comes after the
        // kill (`worker::condemned_grace`).
        // regression: a request nginx sent on a kept connection parked in a worker
        // whose event loop a time.sleep() blocked got a 502 at the kill, and no line
        // in postern's log named it.
        // Not one condemned for its silence: stopped, it could not hand anything
        // over, and one only late would stop beating at the SIGTERM and could never
        // be spared (`kill_or_spare` drains a spared one).
        if !matches!(why, Condemned::Silent(_)) {
            self.term();
        }
        kill_at
    }

    /// The end of a --timeout dump: SIGKILL, unless what condemned the worker ended
    /// meanwhile (the request finished, or the event loop ticked again, within the
    /// 500 ms of the dump). Then killing would only cut off the worker's other requests
    /// (an ASGI worker may hold hundreds): it drains instead (its SIGTERM came with the
    /// dump), and its replacement is already on its way.
    fn kill_or_spare(&mut self, board: &Scoreboard) {
        let still_running = match self.condemned_for {
            None => true,
            Some(Condemned::Request(t, since)) => {
                board.line(self.slot, t).since.load(Ordering::Acquire) == since
            }
            Some(Condemned::Loop(beat)) => board.beat(self.slot) == Some(beat),
            Some(Condemned::Silent(seen)) => board.seen(self.slot) == Some(seen),
        };
        if self.quit.is_some() {
            // The stop asked it to stop at once during the dump: it cuts and names its
            // requests itself, and is killed if still there at the end of that grace.
            self.phase.killed();
            return;
        }
        if still_running {
            // Each other request past the limit by now is a timeout too (requests that
            // hang together pass it together), not only the one the kill is for.
            // regression (probe 379): two requests past --timeout counted one.
            if let (Some(Condemned::Request(t, since)), Some(limit)) =
                (self.condemned_for, self.opts.timeout)
            {
                let others = board
                    .overdue_lines(self.slot, limit)
                    .into_iter()
                    .filter(|&i| {
                        (i, board.line(self.slot, i).since.load(Ordering::Acquire)) != (t, since)
                    })
                    .count();
                if others > 0 {
                    board.count_timeout(others as u64);
                }
            }
            // An ASGI worker asked to stop at once names its own through its loop's
            // cut-off (all of them, not only the 16 its lines show); what its lines
            // still show when it exits or is killed is named then (a blocked loop).
            // regression (probe 355): named here, 15 of 40 streams; 25 had no line.
            let loop_names = self.served
                && board.serves_asgi(self.slot)
                && !matches!(self.condemned_for, Some(Condemned::Silent(_)));
            if !loop_names {
                self.name_cut_offs(board);
            }
            // Asked to stop at once, so that it cuts and marks its FastCGI responses
            // under way (a plain kill closed them unmarked: nginx took an unbuffered
            // stream on a Unix socket for a whole response); killed 1.5 s later if
            // still there. One condemned for its silence cannot act on it (stopped,
            // stuck in the kernel): killed now.
            // One that never served (condemned in an ASGI lifespan startup) has nothing
            // to cut. A --timeout kill before a stop is not the stop's.
            if matches!(self.condemned_for, Some(Condemned::Silent(_))) || !self.served {
                signal(self.pid, Signal::KILL);
                self.sigkilled = true;
            } else {
                self.stop_now(board, StopNow::Timeout);
                self.before_stop = !board.is_stopping();
                // The ask failed (killed at once instead): nobody else names them.
                // regression (review 357): an ASGI worker's went unnamed.
                if loop_names && self.quit.is_none() {
                    self.name_cut_offs(board);
                }
            }
            self.phase.killed();
        } else {
            let what = match self.condemned_for {
                Some(Condemned::Loop(_)) => "its event loop ran again",
                Some(Condemned::Silent(_)) => "it beat again",
                _ => "the request that passed --timeout ended",
            };
            tracing::warn!(
                pid = raw(self.pid),
                "{what} while the stacks were dumped: the worker is not killed; it finishes its other requests and is replaced"
            );
            self.phase.spare();
            // regression: a worker already draining (a reload) got a second SIGTERM
            // here and cut off the requests this was meant to spare.
            self.term();
        }
    }

    /// The stop ends it at once, for `why` (a second signal, SIGQUIT, the stop's
    /// deadline). One that served is asked to stop now ([`crate::stop::stop_now`]): it
    /// cuts its FastCGI responses and marks them, names its requests with their access
    /// lines, and exits; it is killed only if still there [`QUIT_GRACE`] later
    /// ([`Worker::kill_if_still_there`]). A plain kill closed its connections
    /// unmarked, and nginx took an unbuffered stream on a Unix socket for a whole
    /// response. regression (probe 346): a second signal or SIGQUIT ended such a
    /// stream as a complete 200 (curl exit 0). One still importing the app has
    /// nothing to cut (killed at once; one past its import may have become ready since
    /// the stop began, unseen: asked too). One already asked keeps its grace (a third
    /// signal: regression (probe 351): its kill at once closed the streams unmarked
    /// and unnamed).
    fn stop_now(&mut self, board: &Scoreboard, why: StopNow) {
        if self.quit.is_some() {
            return;
        }
        if (self.served || board.import_over(self.slot))
            && !self.sigkilled
            && crate::stop::stop_now(raw(self.pid), why).is_ok()
        {
            // An ASGI worker's loop cancels its tasks, each named with its access line
            // (their scoreboard lines then clear): counted now, all of them, not only
            // the 16 its lines show. What it still runs when it exits or is killed is
            // named then.
            // regression (probe 352): named here from the lines, 16 of them.
            let asgi_running = if board.serves_asgi(self.slot) {
                board.running(self.slot).max(board.in_flight(self.slot))
            } else {
                0
            };
            self.quit = Some(Quit {
                why,
                kill_at: Some(Instant::now() + QUIT_GRACE),
                asgi_running,
            });
            self.sigkilled = true;
            return;
        }
        signal(self.pid, Signal::KILL);
        self.sigkilled = true;
    }

    /// A worker asked to stop now that is still there at its [`QUIT_GRACE`]: killed,
    /// what it still runs named (it did not get to). Returns when that is due, if not yet.
    fn kill_if_still_there(&mut self, board: &Scoreboard, now: Instant) -> Option<Instant> {
        let Some(
            q @ Quit {
                why,
                kill_at: Some(kill_at),
                ..
            },
        ) = self.quit
        else {
            return None;
        };
        if now < kill_at {
            return Some(kill_at);
        }
        self.quit = Some(Quit { kill_at: None, ..q });
        // (For a WSGI worker's --timeout, the master named them when it condemned it.)
        if why != StopNow::Timeout {
            self.name_cut_offs_for(board, why.says());
        } else if board.serves_asgi(self.slot) {
            self.name_cut_offs(board);
        }
        signal(self.pid, Signal::KILL);
        None
    }

    /// Kills the worker if it is still importing the app (it never served, and will
    /// not): the import's end and this give-up race on the scoreboard, and one whose
    /// import ended first may have accepted, so it is left to its SIGTERM. True when
    /// killed.
    fn abandon_import(&mut self, board: &Scoreboard) -> bool {
        if self.sigkilled || self.served || !board.abandon_import(self.slot) {
            return false;
        }
        signal(self.pid, Signal::KILL);
        self.sigkilled = true;
        self.abandoned = true;
        self.before_stop = true;
        true
    }

    /// Records that the worker is on its way out, for `cause` (the first cause wins).
    fn mark_retiring(&mut self, board: &Scoreboard, cause: Cause) {
        let cause = self.phase.stop(cause);
        board.mark_draining(self.slot, cause);
    }

    /// Wakes the worker's I/O thread to look at its mark now (a byte on its status
    /// socket), so that a worker deaf to SIGTERM leaves at once, not at its next look
    /// (once a second: `worker::watch_mark`). Never blocks; nothing if it is gone. At
    /// the whole server's stop only for a lone worker (`stop_all`): one with siblings
    /// learns it from its listeners shut under it (the others served the queues), or
    /// that look.
    fn nudge(&self) {
        if let Some(s) = &self.status {
            let _ = rustix::net::send(
                s,
                &[worker::LOOK],
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            );
        }
    }
}

/// A worker asked to stop at once ([`Worker::stop_now`]).
#[derive(Debug, Clone, Copy)]
struct Quit {
    why: StopNow,
    /// When it is killed if still there; None once it was.
    kill_at: Option<Instant>,
    /// An ASGI worker's requests running when it was asked (its scoreboard lines, named
    /// then): its own stop may clear them before it exits.
    asgi_running: usize,
}

/// Why a worker was condemned for `--timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condemned {
    /// A request passed it: its line, its start.
    Request(usize, u64),
    /// Its event loop has not ticked for longer (`crate::asgi::beat`), with no request
    /// past it: its last tick.
    Loop(u64),
    /// It has not beaten for longer (stopped, frozen; [`silent_after`]): its last beat.
    Silent(u64),
}

impl Condemned {
    /// What the kill cuts the worker's other requests off for.
    fn cause(self) -> &'static str {
        match self {
            Condemned::Request(..) => "another request's --timeout",
            Condemned::Loop(_) => "its event loop blocked past --timeout",
            Condemned::Silent(_) => "its heartbeat stopping past --timeout",
        }
    }
}

/// How long a serving worker may go without a heartbeat under `--timeout` (the
/// worker's I/O thread beats every second): the limit, but never under `/status`'s
/// [`crate::stats::UNRESPONSIVE_AFTER`] (a machine loaded enough to delay a beat for
/// seconds must not cost workers under a short `--timeout`), plus one beat.
fn silent_after(timeout: Duration) -> Duration {
    timeout.max(crate::stats::UNRESPONSIVE_AFTER) + Duration::from_secs(1)
}

/// How long a heartbeat found too old must stay the last before the worker is
/// condemned: a master that was frozen itself (a paused VM, a stopped container)
/// finds every beat old when it runs again, and the workers beat again within a
/// second.
const SILENT_CONFIRM: Duration = Duration::from_secs(2);

/// What a process's threads' states (`/proc/PID/task/*/stat`, the letter after the
/// command in parentheses) say, in words for a log line: the most telling one.
fn process_state(pid: Pid) -> &'static str {
    let mut states = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", raw(pid))) {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            if let Some(c) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
            {
                states.push(c);
            }
        }
    }
    describe_states(&states)
}

/// [`process_state`] from the threads' state letters.
fn describe_states(states: &[char]) -> &'static str {
    let any = |c: char| states.contains(&c);
    if any('T') {
        "stopped by a signal (SIGSTOP, SIGTSTP, docker pause)"
    } else if any('t') {
        "stopped by a debugger"
    } else if any('D') {
        "a thread stuck in the kernel (uninterruptible wait)"
    } else if any('Z') || any('X') {
        "exiting"
    } else if any('R') || any('S') {
        "running, but its I/O thread does not beat"
    } else {
        "in an unknown state"
    }
}

/// What a signal that ended an import suggests: the OOM killer's is SIGKILL.
fn oom_hint(sig: Option<i32>) -> &'static str {
    if sig == Some(libc::SIGKILL) {
        " (out of memory? the kernel log says)"
    } else {
        ""
    }
}

/// Why a worker that never served failed to start, for its exit's line: the app's
/// error (logged by the worker), or the signal that killed it during its import.
/// regression: a replacement SIGKILLed while importing (the OOM killer, a kill -9) was
/// logged "the app's error is logged above: code on disk that does not import?", with
/// no error of the app's anywhere.
// regression (probe 385): an import that called os._exit(0) was said to have logged an
// error above, and none was there.
fn start_failure(sig: Option<i32>, quiet_exit: bool) -> String {
    match sig {
        None if quiet_exit => "it exited with code 0 during its import, with no error: the app's module (or one it imports) called os._exit(0), which ends the process at once".to_owned(),
        None => "the app's error is logged above".to_owned(),
        Some(libc::SIGKILL) => "killed by SIGKILL during its import (out of memory? the kernel log says), not the app's code failing".to_owned(),
        Some(s @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT | libc::SIGILL | libc::SIGFPE)) => {
            format!("killed by {} during its import: a crash in the import (a C extension's?)", signals::name(s))
        }
        Some(s) => format!("killed by {} during its import (a signal sent to it from outside the master?), not the app's code failing", signals::name(s)),
    }
}

/// `: killed by …` ([`start_failure`]) when a signal ended the import, else nothing.
fn killed_why(sig: Option<i32>, quiet_exit: bool) -> String {
    if sig.is_none() && !quiet_exit {
        return String::new();
    }
    format!(": {}", start_failure(sig, quiet_exit))
}

/// A worker's `--max-lifetime`: the limit plus up to a tenth of it, drawn from its pid.
/// regression (probe 385): workers started together (at the start, by a reload) all
/// passed it in the same moment and imported their successors at once, each cycle.
fn lifetime(limit: Duration, pid: Pid) -> Duration {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    let seed = u64::from(raw(pid).unsigned_abs());
    limit + Duration::from_millis(super::tenth_of(ms, seed))
}

fn raw(pid: Pid) -> i32 {
    pid.as_raw_nonzero().get()
}

fn signal(pid: Pid, sig: Signal) {
    let _ = rustix::process::kill_process(pid, sig);
}

/// The `--stats` helper process: it serves the endpoint from the scoreboard.
struct StatsHelper {
    bound: crate::server::listener::Bound,
    source: crate::stats::Source,
    pid: Option<Pid>,
    started: Instant,
}

struct Master {
    board: Arc<Scoreboard>,
    /// The options of the serving generation (`generation`): the start's, then each
    /// reload's ([`Reread`]), back to the previous ones at a rollback.
    opts: Arc<Options>,
    /// Each generation's options and settings still needed: the serving one, the
    /// newest complete one (a rollback goes back to it) and any with a worker.
    gens: BTreeMap<u64, Generation>,
    /// `--lifespan-timeout` at or over `--worker-start-timeout`, said once an ASGI
    /// worker is ready (see [`Options::lifespan_timeout_over_start`]).
    lifespan_warning: Option<Duration>,
    target: usize,
    generation: u64,
    /// The newest generation ever started: a reload after a rolled-back one gets a
    /// number of its own (the log tells them apart).
    newest_generation: u64,
    workers: Vec<Worker>,
    /// Workers of the current generation that died before they were ready, in a row.
    boot_failures: u32,
    /// Starts killed at their start bound in a row while no worker served
    /// ([`Master::watch_boots`]): each doubles the next one's bound.
    lone_kills: u32,
    /// When the worker whose boot failed last exited: the respawn backoff counts from
    /// there (see `fill`).
    failed_exit: Option<Instant>,
    /// Starting a worker failed (fork, its pipe, no slot free) this many times in a row,
    /// and when to try again (see `fill`).
    spawn_failures: u32,
    spawn_retry: Option<Instant>,
    announced: bool,
    /// The newest generation that was complete (all of it served: the first start's,
    /// then each reload's that succeeded): a failed reload goes back to it.
    completed: u64,
    /// A reload (RELOADING=1) is not over yet: systemd waits for one READY=1 when it
    /// is, whether it succeeded (the whole new generation serves) or failed (rollback).
    reload_pending: bool,
    /// A reload since the last complete generation set the number of workers (its
    /// `--workers` differed from the serving generation's): a rollback, or a reload
    /// that keeps the serving generation's `--workers`, takes that generation's number
    /// again (with its SIGTTIN/SIGTTOU count).
    reload_set_target: bool,
    /// A reload was asked for during the first start: it runs once the first start is
    /// complete (see `reload`).
    reload_deferred: bool,
    /// The reload's new workers killed by a signal during their import (see
    /// [`Verdict::Restart`]), and how many of the starts to come replace such a one.
    import_kills: u32,
    retries_due: u32,
    /// Why workers left the serving generation, oldest first: the causes their
    /// replacements start with (`fill`).
    pending: VecDeque<Cause>,
    stats: Option<StatsHelper>,
    /// The master's signals (None in a child just forked: it is closed there).
    sfd: Option<SignalFd>,
    /// What made the stop under way unclean: the master then exits 1 (see `stop`).
    unclean: Unclean,
    /// The stop is SIGQUIT's (kill now).
    quitting: bool,
    mask: SigSet,
    /// `--touch-reload`'s watch (its inotify descriptor is the master's: dropped in
    /// each child, like the signalfd).
    touch: Option<TouchReload>,
}

/// One generation's settings, as the start or a reload made them.
struct Generation {
    opts: Arc<Options>,
    settings: GenerationSettings,
    /// The number of workers kept while it served: a reload that changes `--workers`
    /// sets a new target, and its rollback goes back to this one.
    target: usize,
    /// Its settings differ from the generation it replaced.
    changed: bool,
}

/// Runs the master until a stop. `worker` runs in each forked child and returns the
/// child's exit code; it receives the write end of its status pipe. `listeners` are
/// the serving sockets the workers share: at a stop the master makes them refuse new
/// connections before it signals the workers, who then serve what is queued.
/// `settings` is what the first workers run ([`WorkerContext::settings`]); at each
/// reload `reread` reads the configuration again, given the serving generation's
/// settings, and says what the new generation runs, or refuses the reload.
pub fn run(
    opts: Options,
    settings: GenerationSettings,
    stats: Option<Stats>,
    listeners: &[crate::server::listener::Bound],
    mut reread: impl FnMut(&GenerationSettings) -> Reread,
    worker: impl Fn(WorkerContext) -> i32,
) -> Result<(), SupervisorError> {
    let mask = SigSet::of(&signals::handled());
    mask.block().map_err(SupervisorError::Signals)?;
    let sfd = SignalFd::new(&mask).map_err(SupervisorError::Signals)?;
    let board = Arc::new(
        Scoreboard::new(MAX_SLOTS, opts.threads.max(1)).map_err(SupervisorError::Scoreboard)?,
    );
    board.set_metrics(stats.is_some());
    board.publish_target(opts.workers);
    let stats = stats.map(|s| StatsHelper {
        source: report::source(Arc::clone(&board), true, s.probes, s.config),
        bound: s.bound,
        pid: None,
        started: Instant::now(),
    });
    let mut m = Master::new(board, opts.clone(), settings, stats, Some(sfd), mask);
    tracing::info!(
        master = std::process::id(),
        workers = opts.workers,
        "master started; starting workers"
    );
    // Before the first fork, so that every worker inherits it: the channel on which a
    // leaving worker hands its idle FastCGI keep-alive connections, and new
    // connections that sent nothing yet (any protocol), to the others.
    if let Err(e) = crate::server::fastcgi::handover::Channel::create() {
        tracing::warn!(error = %super::with_open_files_advice(e.to_string()), "cannot create the hand-over channel; idle keep-alive FastCGI connections close at reloads, and a leaving worker keeps new connections that sent nothing until --head-timeout");
    }
    // The stats helper first, so it inherits no worker's pipe.
    m.spawn_stats()?;
    for _ in 0..m.target {
        m.spawn(&worker, Cause::Boot)?;
    }
    m.touch = opts.touch_reload.clone().map(TouchReload::new);
    loop {
        if let Some(t) = &mut m.touch {
            if t.changed() {
                tracing::info!(file = %t.path().display(), "--touch-reload file changed");
                lost_socket_files(listeners);
                m.reload(&worker, &mut reread)?;
            }
        }
        // Read the scoreboard first: a worker that recycled itself and has already
        // exited must be seen as retiring, not as a crash.
        let mut due = m.watch();
        m.reap()?;
        m.hold_while_starts_fail();
        m.relieve_surplus();
        due = earliest(due, m.fill(&worker)?);
        due = earliest(due, m.keep_stats()?);
        due = earliest(due, m.touch.as_ref().and_then(|t| t.due()));
        m.complete_generation();
        if m.announced && std::mem::take(&mut m.reload_deferred) {
            m.reload(&worker, &mut reread)?;
        }
        m.forget_generations();
        due = earliest(due, m.watch_boots());
        m.board
            .publish_master_log_drops(crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed));
        for i in m.wait(due) {
            m.check_status(i);
        }
        while let Some(sig) = m.signals().read() {
            match sig {
                libc::SIGHUP => {
                    // Its trigger named, as --touch-reload's is.
                    // regression: a SIGHUP reload had no line saying what started it.
                    tracing::info!(generation = m.generation, "SIGHUP: reload asked for");
                    lost_socket_files(listeners);
                    m.reload(&worker, &mut reread)?;
                }
                libc::SIGTERM | libc::SIGINT => {
                    notify::notify("STOPPING=1");
                    tracing::info!(signal = %signals::name(sig), "stopping: workers finish their requests (--graceful-timeout {:?})", m.opts.graceful_timeout);
                    return m.stop(sig, listeners);
                }
                libc::SIGQUIT => {
                    notify::notify("STOPPING=1");
                    tracing::info!("SIGQUIT: stopping now");
                    return m.stop(sig, listeners);
                }
                libc::SIGTTIN => {
                    m.scale(true);
                    tracing::info!(workers = m.target, "SIGTTIN: one worker more");
                }
                libc::SIGTTOU => match m.scale(false) {
                    (true, _) => {
                        tracing::info!(workers = m.target, "SIGTTOU: one worker less");
                        m.retire_extra();
                    }
                    // regression: during a reload to one worker, it was ignored, and
                    // the rollback went back to the serving generation's number as it
                    // was before it.
                    (false, Some(kept)) => tracing::info!(
                        workers = m.target,
                        kept,
                        "SIGTTOU: the reload's generation runs one worker, the least; the generation that serves keeps one less, which a failed reload goes back to"
                    ),
                    // regression: it was ignored without a word.
                    (false, None) => tracing::warn!(
                        workers = m.target,
                        "SIGTTOU ignored: one worker is the least"
                    ),
                },
                libc::SIGUSR1 => {
                    // Workers (and the stats helper) inherit the reopening handler
                    // (crate::logging).
                    crate::logging::reopen();
                    let helper = m.stats.as_ref().and_then(|h| h.pid);
                    for pid in m.workers.iter().map(|w| w.pid).chain(helper) {
                        signal(pid, Signal::USR1);
                    }
                }
                libc::SIGUSR2 => {
                    // regression: its default action killed the master (exit 140), the
                    // workers followed, and the socket and pidfile were left behind.
                    tracing::warn!("SIGUSR2 ignored: postern has no binary upgrade (gunicorn's USR2); SIGHUP reloads the app with new workers, and a new postern binary needs a restart (socket activation keeps the socket open across it)");
                }
                s if s == crate::stop::stop_now_signal() => {
                    // regression (review 353): its default action killed the master.
                    tracing::warn!("SIGRTMIN+5 ignored: it is the master's own signal to its workers to stop at once (SIGQUIT stops postern at once)");
                }
                _ => {}
            }
        }
    }
}

/// The earlier of two optional deadlines.
/// At a reload: each Unix socket file postern bound whose path no longer names its
/// socket (deleted by hand or a tmp cleaner, replaced) is said, with what to do. The
/// listener still accepts what reaches it, but nothing can connect by the path: the
/// front server answers 502 (`connect() to unix:... failed (2: No such file or
/// directory)`), and a reload cannot bind it again (the master binds once).
/// regression (probe 385): a deleted socket file went unsaid at reloads and in /ping.
fn lost_socket_files(listeners: &[crate::server::listener::Bound]) {
    for l in listeners {
        let Some(file) = &l.socket_file else { continue };
        if let Some(what) = file.lost() {
            tracing::error!(
                listener = %l.addr,
                "the listener's socket file is no longer there ({what}): front servers cannot reach postern by its path (nginx answers 502: 'No such file or directory', or 'Connection refused' from what has the name now) and a reload cannot bind it again: restart postern (systemd's RuntimeDirectory= keeps the directory postern's; a tmp cleaner must spare it)"
            );
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The poll(2) timeout until `due`: None (forever) without a deadline. One
/// millisecond late, so that the strict comparisons at the deadline hold.
fn timeout_until(due: Option<Instant>) -> Option<rustix::event::Timespec> {
    let due = due?;
    let left = due.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
    Some(
        rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        }),
    )
}

impl Master {
    fn new(
        board: Arc<Scoreboard>,
        opts: Options,
        settings: GenerationSettings,
        stats: Option<StatsHelper>,
        sfd: Option<SignalFd>,
        mask: SigSet,
    ) -> Master {
        let opts = Arc::new(opts);
        let first = Generation {
            opts: Arc::clone(&opts),
            settings,
            target: opts.workers,
            changed: false,
        };
        Master {
            board,
            target: opts.workers,
            lifespan_warning: opts.lifespan_timeout_over_start,
            gens: BTreeMap::from([(0, first)]),
            opts,
            generation: 0,
            newest_generation: 0,
            workers: Vec::new(),
            boot_failures: 0,
            lone_kills: 0,
            failed_exit: None,
            spawn_failures: 0,
            spawn_retry: None,
            announced: false,
            completed: 0,
            reload_pending: false,
            reload_set_target: false,
            reload_deferred: false,
            import_kills: 0,
            retries_due: 0,
            pending: VecDeque::new(),
            stats,
            sfd,
            mask,
            touch: None,
            unclean: Unclean::default(),
            quitting: false,
        }
    }

    fn signals(&self) -> &SignalFd {
        self.sfd
            .as_ref()
            .expect("the signalfd is only taken in a forked child")
    }

    /// Workers of the serving generation that are not on their way out.
    fn live(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.current(self.generation))
            .count()
    }

    /// Whether `w` takes connections from the listen queues: it said it is ready, the
    /// master has not told it to leave, and it has not retired itself (`--max-requests`,
    /// `--max-rss`). A worker that did so since the master last read the scoreboard
    /// (`watch`, once per turn of the loop) still reads `Phase::Serving`, but has
    /// stopped accepting. Every decision that hangs on "someone serves the queue" asks
    /// this: whether to kill a start past `--worker-start-timeout`, a crash loop, which
    /// worker a successor relieves, the stop's kill of imports.
    /// regression: watch_boots and judge_exit's fleet tested the phase alone, so a
    /// worker that had just retired itself counted as serving: the successor still
    /// importing past --worker-start-timeout was killed (nothing then served), and a
    /// replacement's 10th failed start in a row was retried instead of stopping.
    fn serves_queue(&self, w: &Worker) -> bool {
        w.phase == Phase::Serving && self.board.self_retired(w.slot).is_none()
    }

    /// The fleet as [`phase::judge_exit`] sees it when a worker exits (the departed one
    /// already taken out of `workers`).
    fn fleet(&self) -> Fleet {
        Fleet {
            generation: self.generation,
            announced: self.announced,
            boot_failures: self.boot_failures,
            previous_serves: self.reloading(),
            others_serve: self.workers.iter().any(|o| self.serves_queue(o)),
            import_kills: self.import_kills,
        }
    }

    /// An older generation still serves: a reload is in progress.
    fn reloading(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.generation < self.generation && w.phase.active())
    }

    /// Sleeps until a signal, a status pipe, a `--touch-reload` event or `due`;
    /// returns the workers whose status pipe is readable (or closed).
    fn wait(&self, due: Option<Instant>) -> Vec<usize> {
        let mut fds = vec![PollFd::new(self.signals(), PollFlags::IN)];
        let also = self
            .touch
            .as_ref()
            .and_then(|t| t.fd())
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
        let pipes: Vec<usize> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let p = w.status.as_ref()?;
                fds.push(PollFd::new(p, PollFlags::IN));
                Some(i)
            })
            .collect();
        let timeout = timeout_until(due);
        fds.extend(also);
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        fds[1..]
            .iter()
            .zip(pipes)
            .filter(|(f, _)| !f.revents().is_empty())
            .map(|(_, i)| i)
            .collect()
    }

    fn spawn(
        &mut self,
        worker: &impl Fn(WorkerContext) -> i32,
        cause: Cause,
    ) -> Result<(), SupervisorError> {
        // A socket pair, not a pipe: the master writes on it too ([`Worker::nudge`]).
        let (read, write) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| SupervisorError::Fork(e.into()))?;
        let master_pid = rustix::process::getpid();
        let used: Vec<usize> = self.workers.iter().map(|w| w.slot).collect();
        let slot = (0..self.board.slots)
            .find(|s| !used.contains(s))
            .ok_or_else(|| SupervisorError::Fork(std::io::ErrorKind::WouldBlock.into()))?;
        self.board.reset(slot, 0, self.generation, cause);
        self.board.set_threads(slot, self.opts.threads);
        let settings = self
            .settings_of(self.generation)
            .map(|g| Arc::clone(&g.settings))
            .unwrap_or_else(|| Arc::new(()));
        let forked = Instant::now();
        let child = if self.opts.preload {
            // SAFETY: postern runs no thread in the master (no runtime, no helper
            // thread); with --preload the app may have started Python threads at
            // import (warned about at the start), which the child does not inherit: the
            // fork is bracketed for CPython (its locks are taken across it), and the
            // child runs no Rust lock such a thread could hold.
            // The master's own fork: the worker keeps the master's mask until it has
            // its handlers (see `forked`).
            // regression (review): not marked so, every worker unblocked the master's
            // signals at its fork, and a SIGTERM or SIGTTIN then took its default
            // action before the worker's handlers were in place.
            crate::forked::master_fork(|| unsafe { crate::wsgi::interpreter::fork_with_python() })
                .map_err(SupervisorError::Fork)?
        } else {
            // SAFETY: as above (no Python in this master).
            unsafe { fork() }.map_err(SupervisorError::Fork)?
        };
        let Some(child) = Pid::from_raw(child) else {
            // So `ps -o comm`, `top` and `pgrep -x postern-worker` tell a worker from
            // the master (`postern`) and the stats helper (`postern-stats`); first, so
            // every thread the worker starts inherits it. regression (probe 427):
            // master, workers and helper all read `postern`, and `pgrep -P MASTER`
            // gave the helper where a worker was meant.
            let _ = rustix::thread::set_name(c"postern-worker");
            // A worker drains on its master's death (killed with SIGKILL, say), and
            // is gone by the deadline the master would have enforced. The death's
            // signal is crate::stop::MASTER_DEATH (never counted as a stop signal).
            self.leave_master(master_pid, Signal::URG, true);
            worker::watch_master(worker::Orphaned {
                master: master_pid,
                board: Arc::clone(&self.board),
                slot,
                allowance: self.opts.graceful_timeout + LEAVE_MARGIN,
                past_graceful: self.opts.past_graceful,
            });
            drop(read);
            // The stats socket and probes are the helper's.
            drop(self.stats.take());
            self.board
                .head(slot)
                .pid
                .store(std::process::id() as i32, Ordering::SeqCst);
            let code = worker(WorkerContext {
                ready: write,
                board: Arc::clone(&self.board),
                slot,
                forked,
                settings,
            });
            std::process::exit(code);
        };
        drop(write);
        // The child stores it too, first thing; from here on /status never shows the
        // slot's 0 of before the fork, however long the child takes to run.
        // regression (hostile LOW): only the child stored it, and a loaded fork left
        // "pid": 0 in /status for ~100 ms.
        self.board
            .head(slot)
            .pid
            .store(raw(child), Ordering::SeqCst);
        tracing::info!(
            pid = raw(child),
            generation = self.generation,
            cause = cause.label(),
            "worker started"
        );
        self.board.count_start(cause);
        let mut w = Worker::new(
            child,
            self.generation,
            slot,
            Some(read),
            Arc::clone(&self.opts),
        );
        if self.retries_due > 0 {
            self.retries_due -= 1;
            w.retry = true;
        }
        self.workers.push(w);
        Ok(())
    }

    /// A status pipe is readable: READY means it serves, RECYCLING wakes the loop
    /// (the scoreboard says why), EOF means it exited (or never will write again).
    fn check_status(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let Some(p) = &w.status else { return };
        let mut buf = [0u8; 16];
        let bytes = match rustix::io::read(p, &mut buf) {
            Ok(0) => {
                w.status = None;
                return;
            }
            Ok(n) => &buf[..n],
            Err(_) => return,
        };
        if !bytes.contains(&worker::READY) {
            return;
        }
        w.phase.ready();
        if !w.served && w.told.is_some() {
            // Told to leave while it was starting (a reload during a reload, SIGTTOU
            // taking the newest worker): it takes its SIGTERM, and starts its own
            // --graceful-timeout, only now that it serves, and it may already have taken
            // requests from the listen queue. Its leave deadline starts now too.
            // regression: it was SIGKILLed at once on READY, with the requests it had
            // just taken (nginx 502s), its deadline already past while it imported.
            w.told = Some(Instant::now());
        }
        w.served = true;
        self.board.mark_serving(w.slot);
        if self.board.serves_asgi(w.slot) {
            // Once: the app is ASGI (--interface auto knows it only now).
            if let Some(lifespan) = self.lifespan_warning.take() {
                super::warn_lifespan_timeout(lifespan, self.opts.start_timeout);
            }
        }
        tracing::info!(
            pid = raw(w.pid),
            boot_ms = w.started.elapsed().as_millis() as u64,
            "worker ready"
        );
        let fresh = w.generation == self.generation;
        let (pid, generation, told) = (w.pid, w.generation, w.told.is_some());
        self.lone_kills = 0;
        if fresh {
            self.boot_failures = 0;
        }
        if !told {
            self.relieve(pid, generation);
        }
        if fresh && self.opts.chain_reload {
            // Chain reload: each new worker that is ready retires one old worker.
            if let Some(old) = self
                .workers
                .iter_mut()
                .find(|o| o.generation < self.generation && o.phase.active())
            {
                old.drain(&self.board, Cause::Reload);
                tracing::info!(pid = raw(old.pid), "chain reload: an old worker drains");
            }
        }
    }

    /// A worker of `generation` (`successor`) is ready: if that makes more workers of
    /// that generation serve than the target, the one that has waited longest for its
    /// successor leaves now (it stops accepting, finishes its requests and exits).
    /// Counted, not paired: an outgoing worker that reached its limit first and left
    /// has a successor still to come, which must not relieve another worker early.
    fn relieve(&mut self, successor: Pid, generation: u64) {
        let candidates = self.workers.iter().map(|w| Candidate {
            serving: w.generation == generation && self.serves_queue(w),
            outgoing: w.outgoing.map(|(_, asked)| asked),
            paused: self.board.waits_for_successor(w.slot),
        });
        let Some(i) = relieved(candidates, self.target, true) else {
            return;
        };
        let w = &mut self.workers[i];
        let Some((cause, asked)) = w.outgoing else {
            return;
        };
        tracing::info!(
            pid = raw(w.pid),
            successor = raw(successor),
            cause = cause.label(),
            waited_ms = asked.elapsed().as_millis() as u64,
            "its successor is ready: the worker stops accepting, finishes its requests and exits"
        );
        w.drain(&self.board, cause);
    }

    /// Completes the current generation once all of it serves, at least `target`
    /// workers: the older generations drain and exit, and the first start or a reload
    /// that is pending says so (one READY=1, one "all N workers ready"). Idempotent: the
    /// loop calls it after every turn's events (a ready byte, an exit, SIGTTOU), and it
    /// acts only when there is something to do.
    /// regression: it ran only when a ready byte arrived, so a reload whose last
    /// worker still starting was taken by SIGTTOU (its import then failed, or it was
    /// killed) never completed: no READY=1, old and new workers serving together.
    fn complete_generation(&mut self) {
        // Counted: the generation's workers that serve the queue, those that asked for
        // a successor included (the successor is of this generation too).
        // regression: only workers that had not asked counted, and all of them had to
        // serve. Under load with a small --max-requests a new worker asks within a few
        // requests of ready, so the generation never looked complete while the load
        // lasted: the old workers were held and served the old code past their limits,
        // the fleet stayed above --workers, and READY=1 never came.
        let serving: Vec<i32> = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && self.serves_queue(w))
            .map(|w| raw(w.pid))
            .collect();
        if serving.len() < self.target {
            return;
        }
        self.completed = self.generation;
        self.reload_set_target = false;
        self.board.publish_generation(self.completed);
        let mut retired = 0;
        let mut killed = Vec::new();
        for w in self.workers.iter_mut() {
            if w.generation < self.generation && w.phase.active() {
                w.drain(&self.board, Cause::Reload);
                // One still importing the app (a replacement or a successor started
                // before the reload) never served: killed, as at a reload during a
                // reload. An import can hold or ignore SIGTERM, and would otherwise
                // run to its end (or to the leave deadline) for nothing.
                // regression: it only got SIGTERM, finished its import, said ready
                // and then drained.
                if w.abandon_import(&self.board) {
                    killed.push(raw(w.pid));
                }
                retired += 1;
            }
        }
        if retired > 0 {
            tracing::info!(
                old = retired,
                "new workers ready; old workers finish their requests and exit"
            );
        }
        if !killed.is_empty() {
            tracing::info!(
                pids = ?killed,
                "old workers still importing the app are killed (they never served)"
            );
        }
        // Once per start and per reload. regression: only when old workers were
        // retired here, which a chain reload has done one by one already: its
        // READY=1 never came, and systemd reported a reload timeout.
        if !self.announced || self.reload_pending {
            if self.reload_pending {
                self.board.count_reload(true);
            }
            self.reload_pending = false;
            let pids = serving;
            notify::notify(&format!(
                "READY=1\nMAINPID={}\nSTATUS=serving: {} workers ready",
                std::process::id(),
                pids.len()
            ));
            tracing::info!(?pids, "all {} workers ready", pids.len());
            self.announced = true;
        }
    }

    /// Reads the scoreboard: self-recycling workers, requests over --timeout or
    /// --slow-log, workers over --max-lifetime (workers still starting: `watch_boots`).
    /// Returns when it next has something to check (a kill, a lifetime, a request that
    /// could pass a limit).
    fn watch(&mut self) -> Option<Instant> {
        let now = scoreboard::now_ns();
        let instant = Instant::now();
        let generation = self.generation;
        // A request that starts after this reading passes the smallest limit no sooner
        // than that limit from now.
        // Each worker is held to its own generation's limits (a reload may change them).
        let limits = std::iter::once(&self.opts)
            .chain(self.workers.iter().map(|w| &w.opts))
            .flat_map(|o| [o.timeout, o.slow_log]);
        let mut due = limits.flatten().min().map(|l| instant + l);
        // A line's start (scoreboard nanoseconds) plus `limit`, as an Instant.
        let at = |since: u64, limit: Duration| {
            instant + Duration::from_nanos((since + limit.as_nanos() as u64).saturating_sub(now))
        };
        due = earliest(due, self.overdue(instant));
        for w in self.workers.iter_mut() {
            if let Phase::Condemned { kill_at } = w.phase {
                if instant >= kill_at {
                    w.kill_or_spare(&self.board);
                } else {
                    due = earliest(due, Some(kill_at));
                }
            }
            // Killed for --timeout: asked to stop at once first (`kill_or_spare`, just
            // now perhaps: its kill is due 1.5 s later).
            // regression (review 353): looked at before it, that kill was not due.
            due = earliest(due, w.kill_if_still_there(&self.board, instant));
            if matches!(w.phase, Phase::Condemned { .. } | Phase::Killed) {
                // Being killed: its lines are stale.
                continue;
            }
            if w.phase.active() {
                if let Some(cause) = self.board.self_retired(w.slot) {
                    // It recycles itself (max requests, RSS): start its replacement
                    // now, unless it is on its way already.
                    w.phase.stop(cause);
                    w.told.get_or_insert(instant);
                    if w.outgoing.is_none() {
                        self.pending.push_back(cause);
                    }
                }
            }
            // Successor first: a worker near its limit (or past --max-lifetime) serves
            // on while its successor imports the app (`fill` starts it, `relieve`
            // retires the worker once it serves), as a reload does.
            // regression: under an even load every worker reached --max-requests
            // within a fraction of a second of the others and recycled with them, and
            // nothing served while their successors imported (every client stalled
            // for the import's length, each cycle).
            if w.phase == Phase::Serving && w.outgoing.is_none() {
                if let Some(cause) = self.board.successor_wanted(w.slot) {
                    w.outgoing = Some((cause, instant));
                    self.pending.push_back(cause);
                }
            }
            if w.phase == Phase::Serving && w.generation == generation && w.outgoing.is_none() {
                if let Some(life) = self.opts.max_lifetime.map(|l| lifetime(l, w.pid)) {
                    if w.started.elapsed() > life {
                        tracing::info!(
                            pid = raw(w.pid),
                            "worker passed --max-lifetime; starting its successor (it serves on until the successor is ready)"
                        );
                        w.outgoing = Some((Cause::MaxLifetime, instant));
                        // For /status (retiring); one that asked already keeps its cause.
                        self.board.want_successor(w.slot, Cause::MaxLifetime);
                        self.pending.push_back(Cause::MaxLifetime);
                    } else {
                        due = earliest(due, Some(w.started + life));
                    }
                }
            }
            for t in 0..self.board.threads {
                let line = self.board.line(w.slot, t);
                let since = line.since.load(Ordering::Acquire);
                if since == 0 {
                    continue;
                }
                let ran = Duration::from_nanos(now.saturating_sub(since));
                if let Some(limit) = w.opts.timeout {
                    if ran > limit {
                        // A stopped worker dumps nothing (the signal waits): said so.
                        // regression (probe 361): the line promised a dump that never
                        // came, and nothing said the worker was stopped.
                        let state = process_state(w.pid);
                        let then = if state.starts_with("stopped") {
                            format!("its worker is {state}, so no stack dump can come; killing and replacing it")
                        } else {
                            "dumping the worker's Python stacks, then killing and replacing it"
                                .to_owned()
                        };
                        tracing::error!(
                            pid = raw(w.pid),
                            request = %crate::logging::Untrusted(line.desc().as_bytes()),
                            request_id = %line.request_id(),
                            ran_ms = ran.as_millis() as u64,
                            "request passed --timeout {limit:?}; {then}"
                        );
                        let why = Condemned::Request(t, since);
                        let kill_at = w.condemn(&self.board, why, &mut self.pending);
                        due = earliest(due, Some(kill_at));
                        break;
                    }
                    due = earliest(due, Some(at(since, limit)));
                }
                if let Some(limit) = w.opts.slow_log {
                    if w.dumped.contains(&(t, since)) {
                        continue;
                    }
                    if ran > limit {
                        // With its id, as its access line and a --timeout line have it.
                        // regression (probe 385): the slow-log line had none.
                        tracing::warn!(
                            pid = raw(w.pid),
                            request = %crate::logging::Untrusted(line.desc().as_bytes()),
                            request_id = %line.request_id(),
                            ran_ms = ran.as_millis() as u64,
                            "slow request (over --slow-log {limit:?}); the worker's Python stacks follow"
                        );
                        signal(w.pid, Signal::USR2);
                        self.board.count_slow();
                        w.dumped.push((t, since));
                        if w.dumped.len() > 64 {
                            w.dumped.remove(0);
                        }
                    } else {
                        due = earliest(due, Some(at(since, limit)));
                    }
                }
            }
            // An ASGI worker whose event loop has not ticked for longer than --timeout
            // with no request past it (a blocking call in a task the app left running
            // after its response, or started at lifespan startup) is blocked: treated
            // as a request past the limit. Its dump names where the loop is stuck.
            // regression: such a worker accepted nothing until the call returned, and
            // nothing caught it.
            // (Not when its I/O thread is silent too: the whole process is stopped or
            // frozen, or the master was, and the check below confirms it first.)
            let io_silent = |w: &Worker| {
                self.board.seen(w.slot).is_some_and(|seen| {
                    Duration::from_nanos(now.saturating_sub(seen)) > 2 * crate::asgi::beat::TICK
                })
            };
            if let (Some(limit), Some(beat)) = (w.opts.timeout, self.board.beat(w.slot)) {
                if io_silent(w) {
                    // Looked at again within a tick: a loop truly blocked while its I/O
                    // thread was late is still caught near its limit.
                    due = earliest(due, Some(instant + crate::asgi::beat::TICK));
                } else if !matches!(w.phase, Phase::Condemned { .. }) {
                    let age = Duration::from_nanos(now.saturating_sub(beat));
                    match crate::asgi::beat::blocked_for(age, limit) {
                        Some(blocked) => {
                            tracing::error!(
                                pid = raw(w.pid),
                                running = self.board.running(w.slot),
                                "event loop blocked for {:.1} s, past --timeout {limit:?} (it has not ticked since); dumping the worker's Python stacks, then killing and replacing it",
                                blocked.as_secs_f64()
                            );
                            let why = Condemned::Loop(beat);
                            let kill_at = w.condemn(&self.board, why, &mut self.pending);
                            due = earliest(due, Some(kill_at));
                        }
                        None => {
                            let allowed = crate::asgi::beat::allowed(limit);
                            due = earliest(due, Some(at(beat, allowed) + Duration::from_millis(1)));
                        }
                    }
                }
            }
            // A serving worker that beats no more (its I/O thread writes the heartbeat
            // every second): stopped (SIGSTOP, a debugger), or frozen. Requests a
            // front server sends on kept FastCGI connections parked in it, and those
            // it holds read whole, wait for it with no request's clock running (their
            // lines are idle): under --timeout it is treated as a request past it.
            // regression (probe 340): a SIGSTOPped worker held such requests for as
            // long as it was stopped; /status called it unresponsive, and nothing else
            // happened.
            // (Not one that stops by itself, which the master has not seen yet: a
            // SIGTERM sent to it directly, the app's own; its I/O thread stops
            // beating as its stop begins, and its drain and ASGI lifespan shutdown
            // may take longer.)
            // regression (review 343): such a worker was killed in the middle of its
            // drain, 13 s or --timeout + 3 s after the signal.
            if let (Some(limit), Some(seen), Phase::Serving, false) = (
                w.opts.timeout,
                self.board.seen(w.slot),
                w.phase,
                self.board.leaving(w.slot),
            ) {
                let allowed = silent_after(limit);
                let age = Duration::from_nanos(now.saturating_sub(seen));
                if age <= allowed {
                    w.silent = None;
                    due = earliest(due, Some(at(seen, allowed) + Duration::from_millis(1)));
                } else {
                    match w.silent {
                        Some((s, noticed)) if s == seen => {
                            if instant.duration_since(noticed) >= SILENT_CONFIRM {
                                w.silent = None;
                                tracing::error!(
                                    pid = raw(w.pid),
                                    running = self.board.running(w.slot),
                                    "worker has not beaten for {:.1} s, past --timeout {limit:?}: {}; killing and replacing it (requests sent to it on kept FastCGI connections are lost with it: nginx resends an idempotent one on another connection)",
                                    age.as_secs_f64(),
                                    process_state(w.pid)
                                );
                                let kill_at = w.condemn(
                                    &self.board,
                                    Condemned::Silent(seen),
                                    &mut self.pending,
                                );
                                due = earliest(due, Some(kill_at));
                            } else {
                                due = earliest(due, Some(noticed + SILENT_CONFIRM));
                            }
                        }
                        _ => {
                            w.silent = Some((seen, instant));
                            due = earliest(due, Some(instant + SILENT_CONFIRM));
                        }
                    }
                }
            }
        }
        due
    }

    /// While the workers that would replace others fail to start (broken code on disk,
    /// an import that hangs past `--worker-start-timeout`), the workers that serve the
    /// queue are held past their recycling limits ([`Scoreboard::hold`]): each serves
    /// on, asks for its successor at its limit if it has not yet, and leaves once a
    /// successor is ready (`relieve`). The boot-failure rules still apply: retried with
    /// the backoff while they serve, a crash loop only when none does.
    /// regression: under --max-requests, with the app broken on disk, every worker
    /// left at its limit while its successor failed to import: nothing served, and 10
    /// failed starts later the master stopped ("workers keep dying right after they
    /// start"), where a worker with no limit would have served on.
    ///
    /// While a reload is under way, its new workers are the old ones' successors: the
    /// old generation's serving workers are held too, until the reload completes
    /// (`complete_generation` drains them) or fails (the rollback finds them serving,
    /// and they stay held while the starts fail).
    /// regression: an old worker that reached --max-requests during a reload left
    /// with no successor (the reload's workers, still importing, counted as live):
    /// when the new code then failed to import, nothing served, the failure was no
    /// rollback, and 10 failed starts later the master stopped.
    ///
    /// Once starts succeed again (a successor served, the code on disk fixed) and no
    /// reload is under way, the holds end ([`Scoreboard::unhold`]): the workers that had
    /// not asked for their successor recycle at their limits as usual again; those that
    /// had serve on held until their successor is ready (`relieve` drains them).
    /// regression: a hold was kept until the worker left: with two workers, the one
    /// whose successor failed was relieved once a start succeeded, and the other read
    /// `"held": "starts-failed"` in /status (and served past its limit, logging that
    /// starts failed) for as long as it lived.
    ///
    /// A worker of a generation with no recycling limit (`--max-requests`, `--max-rss`,
    /// `--max-lifetime`) has none to be held past: it is never held.
    /// regression (probe 379): after a failed reload with no limit set, /status showed
    /// every worker `held (starts-failed)` (and `postern_workers_held`) for good.
    fn hold_while_starts_fail(&mut self) {
        let reloading = self.reloading();
        let limited = |w: &Worker| {
            let o = self.gens.get(&w.generation).map_or(&self.opts, |g| &g.opts);
            o.recycles || o.max_lifetime.is_some()
        };
        if self.boot_failures == 0 && !reloading
            || !self.workers.iter().any(|w| w.phase.active() && limited(w))
        {
            let mut released = Vec::new();
            for w in self.workers.iter().filter(|w| w.phase.active()) {
                if self.board.unhold(w.slot) {
                    released.push(raw(w.pid));
                }
            }
            if !released.is_empty() {
                tracing::info!(
                    pids = ?released,
                    "workers start again: the workers held past their recycling limits are no longer held (each recycles at its limits as usual)"
                );
            }
            return;
        }
        let mut held = Vec::new();
        for w in self.workers.iter().filter(|w| self.serves_queue(w)) {
            if !limited(w) {
                self.board.unhold(w.slot);
                continue;
            }
            let why = if self.boot_failures > 0 {
                Hold::StartsFailed
            } else if w.generation < self.generation {
                Hold::Reload
            } else {
                continue;
            };
            if self.board.hold(w.slot, why) {
                held.push(raw(w.pid));
            }
        }
        if !held.is_empty() {
            // Each says so itself when it passes a limit it has (the master does not
            // know --max-requests or --max-rss).
            tracing::debug!(
                pids = ?held,
                failures = self.boot_failures,
                reloading,
                "workers held past their recycling limits until a successor (or the reload's new workers) is ready"
            );
        }
    }

    /// More workers of the serving generation serve the queue than `--workers`: the
    /// ones waiting for their successor leave (the longest waiting first), down to
    /// `--workers`. A successor's ready byte does this for one worker (`relieve`); this
    /// catches an outgoing worker whose successor will never come (SIGTTOU took it
    /// while it started), which nothing else relieves.
    /// regression: after a SIGTTOU during a recycle, one outgoing worker served on for
    /// good: one worker more than --workers, each living twice --max-lifetime.
    fn relieve_surplus(&mut self) {
        loop {
            let candidates = self.workers.iter().map(|w| Candidate {
                serving: w.generation == self.generation && self.serves_queue(w),
                outgoing: w.outgoing.map(|(_, asked)| asked),
                paused: self.board.waits_for_successor(w.slot),
            });
            let Some(i) = relieved(candidates, self.target, false) else {
                return;
            };
            let target = self.target;
            let w = &mut self.workers[i];
            let Some((cause, asked)) = w.outgoing else {
                return;
            };
            tracing::info!(
                pid = raw(w.pid),
                cause = cause.label(),
                waited_ms = asked.elapsed().as_millis() as u64,
                workers = target,
                "more workers serve than --workers without this one, which waits for its successor: it stops accepting, finishes its requests and exits"
            );
            w.drain(&self.board, cause);
        }
    }

    /// Workers still starting: one warning at [`BOOT_WARN`] (or half
    /// `--worker-start-timeout`), and past `--worker-start-timeout` while others serve
    /// once the first start is over, the kill. Returns the next of these deadlines.
    /// Called after `fill` (and a deferred reload), just before the master sleeps, so
    /// that every worker started in this turn of the loop has its deadline.
    /// regression: called before `fill`, a worker `fill` started (a crashed or recycled
    /// worker's replacement, a SIGTTIN worker, a retry after a failed start, a chain
    /// reload's next step) had none: its hung import was neither warned about nor
    /// killed until something else woke the master.
    fn watch_boots(&mut self) -> Option<Instant> {
        // Only once the first start is over: a first worker still importing while
        // another already serves is not a failed reload but the first start, which is
        // never cut short (`announced`).
        // regression: at a first start with --workers 2 or more, a worker still
        // importing was killed once another served, and the master exited 1 with
        // "the first workers failed to start".
        let others_serve = self.announced && self.workers.iter().any(|w| self.serves_queue(w));
        // Once the first start is over, with none serving too: a replacement whose
        // import hangs (a connect without a timeout) would otherwise leave nothing
        // serving for good, the code fixed on disk or the service back notwithstanding.
        // regression (probe 332, HIGH): the only worker, waiting at --max-requests for
        // its successor, was killed for --timeout while that successor's import hung:
        // nothing served, and nothing was killed or started again after the fix.
        let cut_short = self.announced;
        let limit = self.opts.start_timeout;
        // With none serving, the bound is four times --worker-start-timeout, doubled at
        // each such kill in a row (to 32 times): the start under way is the only hope
        // of serving, so an import that is only slow (which the first start did not
        // cut short) gets there, and one that hangs is tried again now and then, and
        // never stops the master.
        // regression: a start past --worker-start-timeout was killed "while the
        // others serve" when the only one had just retired itself.
        let alone = limit.saturating_mul(4 << self.lone_kills.min(3));
        let mut killed_alone = false;
        let warn_at = BOOT_WARN.min(limit / 2);
        let first_start = !self.announced;
        let mut due = None;
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.phase == Phase::Booting && !w.sigkilled)
        {
            let booting = w.started.elapsed();
            let bound = if others_serve { limit } else { alone };
            if booting >= bound && cut_short {
                // regression: a reload whose import hung was never given up.
                if others_serve {
                    tracing::warn!(
                        pid = raw(w.pid),
                        boot_ms = booting.as_millis() as u64,
                        "worker still starting past --worker-start-timeout {limit:?} while the others serve; killing it (its start counts as failed)"
                    );
                } else {
                    tracing::warn!(
                        pid = raw(w.pid),
                        boot_ms = booting.as_millis() as u64,
                        "worker still starting past {bound:?} (4 x --worker-start-timeout, doubled at each such kill in a row) and no worker serves; killing it so that a new start can (a dependency that hangs? its start counts as failed, but never stops postern)"
                    );
                    w.timed_out_alone = true;
                    killed_alone = true;
                }
                signal(w.pid, Signal::KILL);
                w.sigkilled = true;
                w.start_timed_out = true;
                // Killed before any stop (a stop does not come here): a stop that
                // begins before its exit is reaped does not count it as its own.
                // regression: such a stop exited 1 ("1 worker killed").
                w.before_stop = true;
                continue;
            }
            if booting >= warn_at && !w.slow_boot_said {
                w.slow_boot_said = true;
                // Imported, an ASGI worker is in its lifespan startup: the advice about
                // an import that hangs would send the reader to the wrong place.
                // regression: "does the app's import hang" for a startup handler
                // that never completed.
                let lifespan = self.board.import_over(w.slot) && self.board.serves_asgi(w.slot);
                if lifespan {
                    let killed = if first_start {
                        String::new()
                    } else {
                        format!(", or is killed at {bound:?} (--worker-start-timeout; 4 x with no worker serving)")
                    };
                    // regression: "the app has not sent lifespan.startup.complete" for an
                    // app that had, whose startup task then blocked the loop.
                    let (what, why) = if self.board.answered_lifespan(w.slot) {
                        ("still not ready", "the app answered its ASGI lifespan startup (lifespan.startup.complete) in time, but its event loop has been blocked since. Does a task the startup started make a sync call (time.sleep, a blocking connect or query)? Await an async version or run it with loop.run_in_executor. The worker exits if its loop is not free within another --lifespan-timeout")
                    } else {
                        ("still in the app's ASGI lifespan startup", "its import is over, and the app has not sent lifespan.startup.complete. Does a startup handler wait for something (a database or service connect without a timeout) or never return? The worker exits at --lifespan-timeout")
                    };
                    tracing::warn!(
                        pid = raw(w.pid),
                        "worker {what} after {warn_at:?}: {why}{killed}"
                    );
                } else if first_start {
                    tracing::warn!(
                        pid = raw(w.pid),
                        "worker still starting after {warn_at:?} (does the app's import hang: a connect without a timeout?); the first start is not cut short"
                    );
                } else {
                    tracing::warn!(
                        pid = raw(w.pid),
                        "worker still starting after {warn_at:?} (does the app's import hang: a connect without a timeout?); it is killed at {bound:?} (--worker-start-timeout; 4 x with no worker serving)"
                    );
                }
            }
            // The next deadline, if one is still ahead: past the limit at the first
            // start, a wake-up at the limit would come back
            // every millisecond. A worker becoming ready wakes the loop anyway.
            // regression: the master polled every 1 ms past the limit.
            let next = if w.slow_boot_said { bound } else { warn_at };
            if booting < next {
                due = earliest(due, Some(w.started + next));
            }
        }
        if killed_alone {
            self.lone_kills = self.lone_kills.saturating_add(1);
        }
        due
    }

    /// Kills the workers told to leave (reload, scale-down, --max-lifetime, recycling)
    /// that still run past --graceful-timeout from then: deaf to SIGTERM (the app or a
    /// C extension took or ignored it) or stuck (a request holding the GIL, an atexit
    /// handler that hangs). An ASGI worker (or one that never served: its import may
    /// be slow, and it may still take requests once ready) first gets the allowance of
    /// its lifespan shutdown. Returns the next such deadline.
    /// regression: such a worker was never killed and served on next to its successor.
    ///
    /// During a stop, a worker it told to leave is left to the stop's own deadlines;
    /// one that was already leaving keeps its deadline (the stop does not give it a new
    /// --graceful-timeout), and its kill counts for the stop's exit code like the stop's
    /// own. One whose deadline had passed when the stop came is killed before the stop
    /// begins (`stop` calls this before it sets the flag) and does not count: the
    /// outcome depends on the deadline and the stop's time, not on which of the two the
    /// master's loop saw first.
    /// regression: such a worker was killed only at the stop's deadline, and the stop
    /// exited 0 or 1 depending on whether the master had reaped it before.
    fn overdue(&mut self, instant: Instant) -> Option<Instant> {
        let stopping = self.board.is_stopping();
        let mut due = None;
        for w in self.workers.iter_mut().filter(|w| !w.sigkilled) {
            let (Some(told), Phase::Stopping(cause)) = (w.told, w.phase) else {
                continue;
            };
            if stopping && cause == Cause::Stop {
                continue;
            }
            let wsgi = w.served && !self.board.serves_asgi(w.slot);
            // Condemned for --timeout and spared at the dump's end: its stop takes its
            // condemned grace at least.
            let graceful = match cause {
                Cause::Timeout => w.opts.graceful_timeout.max(worker::condemned_grace(!wsgi)),
                _ => w.opts.graceful_timeout,
            };
            let allowance = graceful
                + LEAVE_MARGIN
                + if wsgi {
                    Duration::ZERO
                } else {
                    w.opts.past_graceful
                };
            if instant < told + allowance {
                due = earliest(due, Some(told + allowance));
                continue;
            }
            let running = self.board.running(w.slot);
            if w.served {
                tracing::warn!(
                    pid = raw(w.pid),
                    cause = cause.label(),
                    running,
                    "worker told to leave is still running {allowance:?} later (past --graceful-timeout); killing it (did the app or a C extension take or ignore SIGTERM, or does a request hold the GIL?)"
                );
            } else {
                tracing::warn!(
                    pid = raw(w.pid),
                    cause = cause.label(),
                    "worker told to leave while it was starting has not finished starting {allowance:?} later (past --graceful-timeout); killing it (it served no request: is the app's import stuck?)"
                );
            }
            signal(w.pid, Signal::KILL);
            w.told = None;
            w.sigkilled = true;
            w.late = true;
            w.before_stop = !stopping;
        }
        due
    }

    fn reload(
        &mut self,
        worker: &impl Fn(WorkerContext) -> i32,
        reread: &mut impl FnMut(&GenerationSettings) -> Reread,
    ) -> Result<(), SupervisorError> {
        // A generation that became ready in this same wake-up is complete first: its
        // READY=1 goes out and the one before it is retired (regression: it was left
        // to the next pass, after this reload had made it an older generation, so
        // three generations ran side by side and its reload never said READY=1).
        self.complete_generation();
        // A reload asked for during the first start waits for its end: its systemd
        // messages (RELOADING=1, then READY=1) come after the start's READY=1, and the
        // first workers are never mistaken for an older generation a reload replaces.
        // regression: a failing reload's rollback sent READY=1 before any worker
        // served (then the start's own: two); one whose import hung left the first
        // start never announced (no READY=1 ever), and its workers were never killed.
        if !self.announced {
            if !self.reload_deferred {
                tracing::info!(
                    "reload asked for during the first start: it runs once the first workers serve"
                );
            }
            self.reload_deferred = true;
            return Ok(());
        }
        // The configuration is read again (as gunicorn's HUP and PHP-FPM's reload
        // do): an invalid one refuses the reload, a valid one is what the new
        // generation runs. regression: deploy MEDIUM: the new workers ran the start's
        // settings, and only a WARN named what the --config file had changed.
        // Compared with the generation that serves, not with one still booting (a
        // reload during a reload drops that one). regression: the newest was taken, so
        // the log named changes from the dropped generation's settings.
        let serving_generation = self.serving_generation();
        let serving = self
            .settings_of(serving_generation)
            .map(|g| Arc::clone(&g.settings))
            .unwrap_or_else(|| Arc::new(()));
        let (next, settings, changed) = match reread(&serving) {
            Reread::Refused => {
                self.refuse_reload();
                return Ok(());
            }
            Reread::Next {
                opts,
                settings,
                changed,
            } => (*opts, settings, changed),
        };
        // A reload during a reload: the generation still booting is dropped at once
        // (the one serving keeps serving until the newest one is ready). Its workers
        // still importing the app are killed: they never served, and only the newest
        // generation will (the import's end and this give-up race on the scoreboard,
        // as at a stop: one whose import ended first may have accepted, and drains).
        // regression: they all finished their imports: 10 SIGHUPs in 2 s with a 2 s
        // import ran 20 imports at once (N-fold CPU and memory) for nothing.
        if self.reloading() {
            let mut killed = Vec::new();
            for w in self.workers.iter_mut() {
                if w.generation == self.generation && w.phase == Phase::Booting {
                    w.drain(&self.board, Cause::Reload);
                    if w.abandon_import(&self.board) {
                        killed.push(raw(w.pid));
                    }
                }
            }
            if !killed.is_empty() {
                tracing::info!(
                    pids = ?killed,
                    generation = self.generation,
                    "reload during a reload: the workers of the generation still importing the app are killed (they never served)"
                );
            }
        }
        self.new_generation(next, settings, changed, serving_generation);
        if self.opts.chain_reload {
            tracing::info!(
                generation = self.generation,
                "reloading (--chain-reload): one new worker at a time, each retiring an old one once it serves"
            );
        } else {
            tracing::info!(
                generation = self.generation,
                "reloading: new workers start, then the old ones drain"
            );
        }
        if self.opts.app_preloaded {
            tracing::warn!(
                "reloading with --preload: the new workers are forked from the master, which imported the app at start, so they run that same code; to deploy new code, restart postern (or run without --preload)"
            );
        }
        notify::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        self.reload_pending = true;
        self.boot_failures = 0;
        self.failed_exit = None;
        self.import_kills = 0;
        self.retries_due = 0;
        // Chain reload: one new worker now, the next once it serves (see `fill`).
        let n = if self.opts.chain_reload {
            1
        } else {
            self.target
        };
        for _ in 0..n {
            if !self.try_spawn(worker, Cause::Reload) {
                // `fill` starts the rest once it may; the old workers serve meanwhile.
                break;
            }
        }
        Ok(())
    }

    /// Starts generation `newest + 1` with the reload's options and settings (not its
    /// workers), `serving` the generation that serves.
    fn new_generation(
        &mut self,
        next: Options,
        settings: GenerationSettings,
        changed: bool,
        serving: u64,
    ) {
        // regression: a reload after a failed one took the failed one's number.
        self.newest_generation += 1;
        if let Some(g) = self.gens.get_mut(&self.generation) {
            g.target = self.target;
        }
        self.generation = self.newest_generation;
        self.take_target(next.workers, serving);
        // Said once, again only if a reload changed it.
        if next.lifespan_timeout_over_start != self.opts.lifespan_timeout_over_start {
            self.lifespan_warning = next.lifespan_timeout_over_start;
        }
        if next.summary != self.opts.summary {
            self.board.publish_summary(&next.summary);
        }
        self.opts = Arc::new(next);
        self.gens.insert(
            self.generation,
            Generation {
                opts: Arc::clone(&self.opts),
                settings,
                target: self.target,
                changed,
            },
        );
    }

    /// The generation that serves: during a reload, the newest complete one (a reload
    /// during a reload drops the one still booting, and a failed one goes back to it),
    /// else the current one.
    fn serving_generation(&self) -> u64 {
        let active = |g: u64| {
            self.workers
                .iter()
                .any(|w| w.generation == g && w.phase.active())
        };
        if self.completed < self.generation && self.reloading() && active(self.completed) {
            self.completed
        } else {
            self.generation
        }
    }

    /// The number of workers of a reload's new generation, whose `--workers` is
    /// `workers`, given the `serving` generation: a changed `--workers` is its size;
    /// unchanged, the serving generation's number stays (SIGTTIN/SIGTTOU's count too),
    /// also when a reload dropped since (a reload during a reload) had set another.
    fn take_target(&mut self, workers: usize, serving: u64) {
        let Some((serving_workers, serving_target)) = self
            .settings_of(serving)
            .map(|g| (g.opts.workers, g.target))
        else {
            return;
        };
        let target = if workers != serving_workers {
            self.reload_set_target = true;
            workers
        } else if self.reload_set_target {
            self.reload_set_target = false;
            serving_target
        } else {
            self.target
        };
        if target != self.target {
            self.target = target;
            self.board.publish_target(self.target);
        }
    }

    /// A reload whose configuration is invalid (the hook said why): nothing changes,
    /// the workers serve on. It counts as a failed reload (`/status`'s `reloads`, which
    /// a deploy script waits on), and systemd hears of it as of one that failed.
    fn refuse_reload(&mut self) {
        self.board.count_reload(false);
        // A reload still under way gets its own READY=1 when it ends: one now would
        // end it early in systemd's eyes.
        if !self.reload_pending {
            notify::notify(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                notify::monotonic_usec()
            ));
            notify::notify(
                "READY=1\nSTATUS=reload refused: the configuration is invalid (see the log); serving on as before",
            );
        }
    }

    /// A reload failed (`failed`, its generation) and `generation` is back to an older
    /// one: the master takes that one's options again, and its number of workers if
    /// the reload had changed `--workers`.
    fn back_to_settings_of(&mut self, failed: u64) {
        let Some((back, target)) = self
            .settings_of(self.generation)
            .map(|b| (Arc::clone(&b.opts), b.target))
        else {
            return;
        };
        let (changed, workers) = self
            .gens
            .get(&failed)
            .map_or((false, back.workers), |f| (f.changed, f.opts.workers));
        // regression: only the failed generation's --workers was looked at, so after a
        // reload during a reload (2 workers + SIGTTIN, A: 4, B: 2, B fails) the master
        // went back with B's 2, not the 3 it had.
        if self.reload_set_target || workers != back.workers {
            self.target = target;
            self.board.publish_target(self.target);
        }
        self.reload_set_target = false;
        if back.summary != self.opts.summary {
            self.board.publish_summary(&back.summary);
        }
        // The reload switched the master's log to its --log-level: back to the
        // serving generation's, which the workers started from now on inherit. Always
        // (a no-op at the same level): the master may log at the level of a reload
        // dropped during this one, not at the failed one's.
        // regression: skipped when the failed generation's level was the serving
        // one's, so A (debug) then B (info, failing) stayed at A's debug.
        if let Err(e) = crate::logging::set_level(&back.log_level) {
            tracing::warn!(error = %e, "cannot go back to the serving generation's --log-level");
        }
        crate::logging::set_access_log(&back.access_log);
        self.opts = back;
        self.lifespan_warning = None;
        if changed {
            tracing::info!(
                generation = self.generation,
                workers = self.target,
                "the failed reload's settings are dropped: the workers started from now on run the settings of the generation that serves"
            );
        }
    }

    /// The settings generation `g` runs: its own, else those of the newest generation
    /// before it still kept (a rollback with no worker of the complete generation left
    /// goes back to a number that may have none: the one before the failed one).
    fn settings_of(&self, g: u64) -> Option<&Generation> {
        self.gens
            .range(..=g)
            .next_back()
            .or_else(|| self.gens.iter().next())
            .map(|(_, v)| v)
    }

    /// Drops the settings of generations no longer needed: not the serving one, not
    /// the newest complete one (a rollback may go back to it), none with a worker.
    fn forget_generations(&mut self) {
        let (serving, completed) = (self.generation, self.completed);
        // What the serving generation runs if it has no settings of its own.
        let before = self.gens.range(..=serving).next_back().map(|(&g, _)| g);
        let workers = &self.workers;
        self.gens.retain(|&g, _| {
            g == serving
                || Some(g) == before
                || g == completed
                || workers.iter().any(|w| w.generation == g)
        });
    }

    /// Starts a worker once the serving fleet is up: a failure (fork refused for lack
    /// of memory or under a pids limit, no descriptor for its pipe, every slot taken
    /// by a burst of reloads) is logged and tried again later with a backoff, while
    /// the workers that serve go on. `false`: it failed.
    /// regression: such a failure at a reload or a respawn made the master exit, and
    /// every worker with it.
    fn try_spawn(&mut self, worker: &impl Fn(WorkerContext) -> i32, cause: Cause) -> bool {
        match self.spawn(worker, cause) {
            Ok(()) => {
                self.spawn_failures = 0;
                self.spawn_retry = None;
                true
            }
            Err(e) => {
                self.spawn_failures += 1;
                // regression: it doubled up to 32 s, so a reload could wait half a
                // minute after the limit that refused it was raised.
                let wait =
                    Duration::from_secs(1 << (self.spawn_failures - 1).min(3)).min(SPAWN_RETRY_MAX);
                self.spawn_retry = Some(Instant::now() + wait);
                self.pending.push_front(cause);
                tracing::error!(
                    error = %super::with_open_files_advice(e.to_string()),
                    failures = self.spawn_failures,
                    "cannot start a worker; the others serve on, trying again in {wait:?}"
                );
                false
            }
        }
    }

    /// SIGTTIN (`more`) or SIGTTOU: one worker more or less now, and during a reload
    /// in the number the serving generation keeps too, which a rollback (or a reload
    /// during this one that keeps the serving `--workers`) goes back to.
    /// regression: a reload that changed `--workers` (2 -> 4) took 5 at a SIGTTIN, and
    /// its rollback went back to the serving generation's 2: the signal was lost.
    /// Whether the number of workers now changed (a SIGTTOU at one worker does not),
    /// and the serving generation's kept number when the signal moved it.
    fn scale(&mut self, more: bool) -> (bool, Option<usize>) {
        let step = |n: usize| {
            if more {
                n + 1
            } else {
                n.saturating_sub(1).max(1)
            }
        };
        let now = step(self.target);
        let changed = now != self.target;
        if changed {
            self.target = now;
            self.board.publish_target(self.target);
        }
        let serving = self.serving_generation();
        if serving == self.generation {
            return (changed, None);
        }
        // The generation whose settings it runs (see `settings_of`).
        let kept = self
            .gens
            .range(..=serving)
            .next_back()
            .or_else(|| self.gens.iter().next())
            .map(|(&g, _)| g);
        let moved = kept.and_then(|g| self.gens.get_mut(&g)).and_then(|g| {
            let was = g.target;
            g.target = step(was);
            (g.target != was).then_some(g.target)
        });
        (changed, moved)
    }

    /// A reload failed, back to `serving`: the workers of the newer generations leave,
    /// except, for a `--chain-reload`, the new workers that serve, which stay, taken
    /// into `serving` (how many is returned). Each of those has already retired an old
    /// worker, and one started in its place would import the app from disk, where the
    /// code that just failed is (postern imports in each worker, not once in the
    /// master).
    /// regression (probe 346): they were drained and restarted from disk; the
    /// restarts failed in turn, and 1 worker of 3 served.
    fn leave_failed_generations(&mut self, serving: u64) -> usize {
        let mut kept = 0;
        for o in self.workers.iter_mut() {
            if o.generation <= serving {
                continue;
            }
            let serves = o.phase == Phase::Serving
                && self.board.self_retired(o.slot).is_none()
                && o.told.is_none()
                && o.outgoing.is_none();
            // Its own generation's settings: the reload's, where `--chain-reload`
            // applies already (the master's are back to `serving`'s by now).
            if o.opts.chain_reload && serves {
                o.generation = serving;
                kept += 1;
            } else {
                o.drain(&self.board, Cause::Reload);
            }
        }
        kept
    }

    /// One worker less (SIGTTOU): the newest still importing the app, else the
    /// newest serving. One still importing is killed at once, as at a reload during a
    /// reload: it never served (the import's end and this give-up race on the
    /// scoreboard: one whose import ended first may have accepted, and drains).
    /// regression: the newest was told to leave even while importing; it finished its
    /// import (and an ASGI lifespan startup), said "worker ready", then left, /status
    /// showing it draining meanwhile, and a SIGTTIN/SIGTTOU storm reached 129
    /// processes.
    fn retire_extra(&mut self) {
        let live = self.live();
        if live > self.target {
            let generation = self.generation;
            let importing = self
                .workers
                .iter()
                .rposition(|w| w.current(generation) && w.phase == Phase::Booting);
            let chosen =
                importing.or_else(|| self.workers.iter().rposition(|w| w.current(generation)));
            if let Some(w) = chosen.map(|i| &mut self.workers[i]) {
                w.drain(&self.board, Cause::Scale);
                if w.abandon_import(&self.board) {
                    tracing::info!(
                        pid = raw(w.pid),
                        "SIGTTOU: the worker still importing the app is killed (it never served)"
                    );
                }
            }
        }
    }

    /// Collects exited workers; logs the unexpected ones. What an exit means is
    /// decided by [`phase::judge_exit`]; this applies it.
    fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            // Any child (pid -1), not rustix's `waitpid(None)`, which is any child in the
            // master's process group: a worker whose app called os.setsid() was never
            // reaped (a zombie, never replaced, and a stop that waited for it for ever).
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(s)) => s,
                Ok(None) | Err(_) => return Ok(()),
            };
            let how = if let Some(code) = status.exit_status() {
                format!("exit code {code}")
            } else if let Some(sig) = status.terminating_signal() {
                // WCOREDUMP: bit 7 of the raw status.
                let core = status.as_raw() & 0x80 != 0;
                format!(
                    "killed by {}{}",
                    signals::name(sig),
                    if core { " (core dumped)" } else { "" }
                )
            } else {
                continue;
            };
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                if let Some(h) = self.stats.as_mut().filter(|h| h.pid == Some(pid)) {
                    tracing::warn!(pid = raw(pid), %how, "the stats endpoint process exited; restarting it");
                    h.pid = None;
                }
                continue;
            };
            // A replacement in a generation that serves (not a reload's new worker,
            // nor a first start's): a READY it wrote before it died, still unread in
            // its status pipe (both came in one wake-up), or a request on its lines
            // (its threads take requests a moment before READY is written) means it
            // served, so its death is a crash, not a start that failed. Only the
            // phase is set: it is not announced ready, nor relieves anyone.
            // regression (probe 396): a worker that took a request that crashed it
            // within moments of its start counted as cause="boot-failure" and was
            // restarted after a backoff ('worker failed to start').
            // A reload's new workers keep the old reading (review 397): under load the
            // first one's death on its first request rolls a reload of code that
            // crashes on every request back, where a crash would drain the old workers.
            let settled = self.announced && !self.reloading();
            let w = &mut self.workers[i];
            if !w.served && settled && w.generation == self.generation {
                let mut buf = [0u8; 16];
                let ready = w.status.as_ref().is_some_and(|p| {
                    matches!(rustix::io::read(p, &mut buf), Ok(n) if buf[..n].contains(&worker::READY))
                });
                if ready || self.board.running(w.slot) > 0 {
                    w.phase.ready();
                    w.served = true;
                }
            }
            let w = self.workers.remove(i);
            // Asked to stop at once, and not killed for it yet: a WSGI worker that
            // exited named its requests itself (with their access lines), an ASGI one
            // those its loop's cut-off ended (their lines cleared); a WSGI one that
            // ended by a signal (an app's handler put back to the default, the OOM
            // killer) could not, nor an ASGI one those whose tasks did not end in
            // time: what its scoreboard lines still show is named here.
            let asgi = self.board.serves_asgi(w.slot);
            let asked = w
                .quit
                .filter(|q| q.kill_at.is_some() && (q.why != StopNow::Timeout || asgi));
            if let Some(Quit { why, .. }) = asked {
                let what = if why == StopNow::Timeout {
                    w.killed_for()
                } else {
                    format!("its worker stopped at once for {}", why.says())
                };
                if status.terminating_signal().is_some() {
                    w.name_cut_offs_as(&self.board, &what, why == StopNow::Timeout);
                } else if asgi {
                    // Its own stop said what still waited (review 354: twice).
                    w.name_running(&self.board, w.condemned_for, &what, why == StopNow::Timeout);
                }
            } else if matches!(w.phase, Phase::Condemned { .. }) {
                // It ended before the master's kill (its own --graceful-timeout).
                w.name_cut_offs(&self.board);
            }
            // One asked to stop at once ended by the master's doing when it exited by
            // itself after cutting its requests (0 or 1), or was killed.
            let by_master = w.sigkilled
                && (status.terminating_signal() == Some(libc::SIGKILL)
                    || (w.quit.is_some() && matches!(status.exit_status(), Some(0 | 1))));
            let failed_start = !w.served && !by_master && status.exit_status() != Some(0);
            // On its way out (a reload's drain, recycling, the stop), killed by a signal
            // the master did not send (the OOM killer, an operator's kill -9) or ended
            // by a fatal exit (a stop's own exits are 0 or 1): a crash, counted and its
            // requests named as a serving worker's.
            // regression (probe 373): its requests were cut off unnamed, and its exit
            // counted as cause="reload".
            // Leaving: told to (or recycling itself, seen or not yet).
            let leaving_for = match w.phase {
                Phase::Stopping(cause) => Some(cause),
                p if p.active() => self.board.self_retired(w.slot),
                _ => None,
            };
            let leaving = leaving_for.is_some();
            // Ended by the SIGTERM the master sent it to drain (the app or a C
            // extension put back SIGTERM's default action; a JVM's handler exits 143):
            // the leave it was asked for, though its requests were cut off (named).
            // regression (review 376): it counted as a crash, at every reload.
            let termed_to_death = w.termed
                && (status.terminating_signal() == Some(libc::SIGTERM)
                    || status.exit_status() == Some(128 + libc::SIGTERM));
            let died_leaving = leaving
                && w.served
                && !by_master
                && asked.is_none()
                && !termed_to_death
                && (status.terminating_signal().is_some()
                    || status.exit_status().is_some_and(|c| c > 1)
                    // os._exit(0) in a request (a drain that ends exits 0 only with
                    // nothing running), as for a serving worker.
                    || (status.exit_status() == Some(0) && self.board.running(w.slot) > 0));
            let signal_in_import = status.terminating_signal().filter(|_| failed_start);
            // An exit 0 before it served that nobody asked for: os._exit(0) in the import.
            let quiet_exit = !w.served && !by_master && status.exit_status() == Some(0);
            // Read before the slot is released: what it was running when it ended, and
            // what it had accepted and not started yet.
            let was_running = self
                .board
                .running(w.slot)
                .max(w.quit.map_or(0, |q| q.asgi_running))
                // What the worker cut off that its lines do not show: an ASGI loop's
                // tasks (their lines cleared as they ended), and besides, uploads still
                // being read (on no line).
                .max(self.board.cut_tasks(w.slot))
                + self.board.cut_reading(w.slot);
            let was_waiting = self.board.waiting(w.slot);
            // A start that failed after the import: an ASGI lifespan startup's (a WSGI
            // worker's would be its server's setup: said in the worker's own line).
            let after_import = self.board.import_over(w.slot) && self.board.serves_asgi(w.slot);
            let j = phase::judge_exit(
                Departed {
                    generation: w.generation,
                    phase: w.phase,
                    self_retired: w
                        .phase
                        .active()
                        .then(|| self.board.self_retired(w.slot))
                        .flatten(),
                    failed_start,
                    killed_in_import: signal_in_import.is_some(),
                    retry: w.retry,
                    // An exit 0 in the middle of a request is the app's os._exit(0),
                    // not a stop signal (that lets its requests finish first).
                    // regression (review): it counted as cause="signal".
                    clean_exit: status.exit_status() == Some(0) && was_running == 0,
                    timed_out_alone: w.timed_out_alone,
                    died_leaving,
                },
                self.fleet(),
            );
            let late = w.late && by_master;
            // A worker that died on its own (a crash: SIGSEGV, SIGABRT, the OOM killer,
            // os._exit) names the requests it was running, as a --timeout kill does:
            // the worker writes no access line for them, and their front server logs
            // a 502 to trace.
            // regression: only "worker died unexpectedly" was said, naming none.
            let died = !by_master
                && asked.is_none()
                && (status.exit_status() != Some(0) || was_running > 0)
                && matches!(j.verdict, Verdict::Replace | Verdict::Outgoing);
            // Not those it cut off itself (a stop of its own: named, counted, with their
            // access lines) before it ended. regression (review 388): named and
            // counted twice (5xx and none) after a SIGTERM sent to the worker itself.
            let cut_itself = self.board.cut_tasks(w.slot) > 0;
            if (died || died_leaving) && was_running > 0 && !cut_itself {
                w.name_running_at_death(&self.board, &how);
                self.board.count_lost(w.slot);
            } else if leaving && termed_to_death && w.served && !by_master && was_running > 0 {
                w.name_running(
                    &self.board,
                    None,
                    &format!("its worker ended ({how}) on the SIGTERM the master sent it to finish its requests and leave: SIGTERM's default action was put back (by the app or a C extension?){FRONT_GETS_ERROR}"),
                    false,
                );
            }
            // Its counts join the totals; the slot is free for a new worker.
            self.board.release(w.slot);
            // Last: a reader that sees the exit sees its requests counted.
            // regression: stats.rs's crash test read the exit, then 2xx not yet there.
            self.board
                .count_exit(if late { Cause::Killed } else { j.cause });
            if j.boot_failures > self.boot_failures {
                self.failed_exit = Some(Instant::now());
            }
            self.boot_failures = j.boot_failures;
            // One whose successor was started has had its replacement.
            if w.outgoing.is_none() {
                self.pending.extend(j.pending);
            }
            let pid = raw(pid);
            // A worker whose own --graceful-timeout cut requests off exits 1; one killed
            // by a signal during the stop (the OOM killer, an operator's SIGKILL) cut
            // off what it was serving too. One that never served (a reload's worker
            // whose import failed as the stop came) cut nothing off.
            // regression: a worker killed by a signal while the server stopped left
            // the exit code 0.
            // Counted here, not when signalled: a worker that exited by itself before
            // the master's SIGKILL reached it (two quick stop signals, idle) was not
            // killed. SIGQUIT's kills were asked for: only their requests count.
            // One killed past its leave deadline before the stop began was the leave's.
            // One still starting that the stop had to kill (an import that hangs) makes
            // the stop unclean too, as the README's signal table says.
            // regression: that stop exited 0.
            if self.board.is_stopping()
                && (w.served || by_master)
                && !w.before_stop
                && !w.abandoned
                && status.exit_status().is_none_or(|c| c != 0)
            {
                self.unclean.requests += was_running;
                self.unclean.waiting += was_waiting;
                if !by_master {
                    self.unclean.failed += 1;
                } else if !self.quitting {
                    self.unclean.killed += 1;
                }
            }
            // Every exit has its line, a failed one naming the worker's generation: a
            // failure the master expected (a worker it told to leave, one of a
            // generation a newer reload replaced) at WARN, what it must act on at ERROR.
            // regression: a worker of a superseded generation (a replacement still
            // importing when a reload came) that failed to start left no line at all.
            let generation = w.generation;
            let failed = !by_master && status.exit_status() != Some(0);
            match j.verdict {
                Verdict::Expected if failed_start => {
                    tracing::warn!(pid, %how, generation, "worker failed to start ({}); it was told to leave already, so nothing replaces it", start_failure(signal_in_import, quiet_exit));
                }
                Verdict::Expected if died_leaving => {
                    let leaving = leaving_for.map_or("", Cause::label);
                    tracing::error!(pid, %how, cause = j.cause.label(), generation, "worker died unexpectedly while it finished its requests to leave (for {leaving}); not replaced for it");
                }
                Verdict::Expected if failed => {
                    tracing::warn!(pid, %how, cause = j.cause.label(), generation, "worker exited");
                }
                Verdict::Expected => {
                    tracing::info!(pid, %how, cause = j.cause.label(), "worker exited");
                }
                Verdict::Superseded => {
                    tracing::warn!(
                        pid,
                        %how,
                        generation,
                        serving_generation = self.serving_generation(),
                        "worker failed to start ({}); a newer reload replaced its generation, so nothing replaces it",
                        start_failure(signal_in_import, quiet_exit)
                    );
                }
                // `new_generation`: the reload's, which may still be starting (probe 407:
                // it was logged as `serving_generation`).
                Verdict::Outgoing if status.exit_status() == Some(0) && was_running == 0 => {
                    tracing::warn!(pid, %how, generation, new_generation = self.generation, "worker stopped without the master asking (a signal sent to it directly?); not replaced: a reload is replacing its generation");
                }
                Verdict::Outgoing => {
                    tracing::error!(pid, %how, generation, new_generation = self.generation, "worker died unexpectedly; not replaced: a reload is replacing its generation");
                }
                Verdict::Restart => {
                    self.import_kills += 1;
                    self.retries_due += 1;
                    tracing::warn!(
                        pid,
                        %how,
                        generation,
                        kills = self.import_kills,
                        "new worker killed by a signal during its import{} (not the app's code failing): another starts in its place and the reload goes on (it fails if that one is killed too, or at {} such kills)",
                        oom_hint(signal_in_import),
                        phase::IMPORT_KILLS
                    );
                }
                Verdict::BootFailed => {
                    tracing::error!(pid, %how, generation, "worker failed to start{}", killed_why(signal_in_import, quiet_exit));
                    // The first start failed: nothing was served yet, nothing to cut.
                    for w in &mut self.workers {
                        let cause = if w.start_timed_out {
                            Cause::BootFailure
                        } else {
                            Cause::Stop
                        };
                        w.mark_retiring(&self.board, cause);
                        signal(w.pid, Signal::KILL);
                        w.sigkilled = true;
                    }
                    return Err(SupervisorError::BootFailed);
                }
                Verdict::Rollback => {
                    // Back to the newest complete generation: after a reload during a
                    // reload, the one in between may serve with some of its workers
                    // only, and its missing ones would start from the code on disk
                    // that just failed. (If none of the complete one is left, the
                    // newest that still serves.)
                    // regression: it went back to such a half-started generation; its
                    // refill failed in turn, and a second rollback sent a second
                    // READY=1 for one reload.
                    let failed = self.generation;
                    let active = |g: u64| {
                        self.workers
                            .iter()
                            .any(|o| o.generation == g && o.phase.active())
                    };
                    self.generation = if self.completed < failed && active(self.completed) {
                        self.completed
                    } else {
                        self.workers
                            .iter()
                            .filter(|o| o.generation < failed && o.phase.active())
                            .map(|o| o.generation)
                            .max()
                            .unwrap_or(failed - 1)
                    };
                    if let Some(sig) = signal_in_import {
                        let kills = self.import_kills + 1;
                        tracing::error!(
                            pid,
                            %how,
                            generation = self.generation,
                            failed_generation = failed,
                            kills,
                            "reload failed: a new worker was killed by signal {} during its import{}, {}; still serving the previous code",
                            signals::name(sig),
                            oom_hint(Some(sig)),
                            if w.retry {
                                "and it had started in place of one killed so".to_owned()
                            } else {
                                format!("{kills} such kills in this reload")
                            }
                        );
                    } else {
                        // regression (probe): a kill at --worker-start-timeout read as
                        // "how=killed by SIGKILL" alone.
                        let why = if w.start_timed_out {
                            format!(
                                " (one still starting past --worker-start-timeout {:?} was killed)",
                                self.opts.start_timeout
                            )
                        } else {
                            String::new()
                        };
                        tracing::error!(pid, %how, serving_generation = self.generation, failed_generation = failed, "reload failed: the new workers do not start{why}; still serving the previous code (generation {})", self.generation);
                    }
                    self.import_kills = 0;
                    self.retries_due = 0;
                    self.back_to_settings_of(failed);
                    // sd_notify(3): after RELOADING=1, READY=1 once the reload is over,
                    // failed ones too (systemd holds the unit in "reloading" until then),
                    // and only then: a READY=1 nothing waits for would end the next
                    // reload early in systemd's eyes.
                    // regression: it never came, and `systemctl reload` hung to its timeout.
                    if std::mem::take(&mut self.reload_pending) {
                        self.board.count_reload(false);
                        notify::notify(
                            "READY=1\nSTATUS=reload failed: the new workers do not start (see the log); serving the previous code",
                        );
                    }
                    let serving = self.generation;
                    let kept = self.leave_failed_generations(serving);
                    if kept > 0 {
                        tracing::warn!(
                            generation = serving,
                            failed_generation = failed,
                            workers = kept,
                            "the chain reload had already replaced {kept} worker(s) of generation {serving}: the new workers that serve keep serving the newer code they imported, beside the workers of generation {serving} still there (stopped, their places would go to restarts that import the code on disk, which just failed); fix the code and reload, or put the previous code back and reload, to serve one version again"
                        );
                    }
                    // Places still missing (a new worker that served, then died or
                    // left): their replacements import the app from disk, where the
                    // code this reload tried is, so they serve that code under the old
                    // generation's number.
                    // regression (probe 340): nothing said so; /status showed only the
                    // old generation.
                    let missing = self.target.saturating_sub(self.live());
                    // The failed reload's own settings (the master's are back to the
                    // serving generation's): one that turned --chain-reload on too.
                    let chained = self
                        .gens
                        .get(&failed)
                        .map_or(self.opts.chain_reload, |g| g.opts.chain_reload);
                    if chained && missing > 0 {
                        tracing::warn!(
                            generation = self.generation,
                            failed_generation = failed,
                            workers = missing,
                            "the chain reload had already replaced {missing} worker(s) of generation {} before it failed: the workers started in their place import the app from disk, which holds the code this reload tried, not generation {}'s, and serve it until the next reload; put the previous code back and reload, or fix the new code and reload",
                            self.generation,
                            self.generation
                        );
                    }
                    // A SIGTTOU during the reload took one from the serving
                    // generation's number: its extra workers leave now.
                    // regression: the number said 2 while 3 served on.
                    while self.live() > self.target {
                        let live = self.live();
                        self.retire_extra();
                        if self.live() == live {
                            break;
                        }
                    }
                }
                Verdict::CrashLoop => {
                    tracing::error!(pid, %how, generation, "worker failed to start{}", killed_why(signal_in_import, quiet_exit));
                    self.stop_all(None);
                    return Err(SupervisorError::CrashLoop(self.boot_failures));
                }
                Verdict::Replace if j.cause == Cause::Signal => {
                    // A clean exit nobody asked for: a SIGTERM (or SIGINT with the app's
                    // own handler) sent to the worker from outside the master.
                    tracing::warn!(pid, %how, generation, "worker stopped without the master asking (a signal sent to it directly?); replacing it");
                }
                Verdict::Replace if j.cause == Cause::BootFailure => {
                    let now = Instant::now();
                    let wait = phase::respawn_at(self.boot_failures, now) - now;
                    let serving = self.workers.iter().filter(|o| self.serves_queue(o)).count();
                    if w.start_timed_out {
                        // regression: it said "the app's error is logged above" for
                        // the master's own kill, with no such error.
                        tracing::error!(
                            pid,
                            generation,
                            failures = self.boot_failures,
                            serving,
                            "worker killed at --worker-start-timeout (its import did not finish); trying again in {wait:?}"
                        );
                    } else {
                        // regression (review 388): a replacement's os._exit(0) in its
                        // import said the app's error was logged above.
                        let why = if signal_in_import.is_some() || quiet_exit {
                            // Still a failed start: an import the OOM killer takes each
                            // time (one over a cgroup's memory limit) fails as surely as
                            // code that does not import, so it has the backoff (a host
                            // short of memory is not hammered) and, none serving, the
                            // stop at the 10th in a row.
                            format!(": {}", start_failure(signal_in_import, quiet_exit))
                        } else if after_import {
                            // regression (probe 329): it said "code on disk that does not
                            // import?" for an app that imported and failed its startup.
                            " after it imported the app (its ASGI lifespan startup failed: the app's error is logged above)".to_owned()
                        } else {
                            " (the app's error is logged above: code on disk that does not import?)"
                                .to_owned()
                        };
                        tracing::error!(
                            pid,
                            %how,
                            generation,
                            failures = self.boot_failures,
                            serving,
                            "worker failed to start{why}; trying again in {wait:?}"
                        );
                    }
                }
                Verdict::Replace => {
                    tracing::error!(pid, %how, generation, "worker died unexpectedly; replacing it");
                }
            }
        }
    }

    /// Starts workers until the current generation has `target` of them (with a
    /// backoff after failures at boot). Returns when to try again, if it must.
    fn fill(
        &mut self,
        worker: &impl Fn(WorkerContext) -> i32,
    ) -> Result<Option<Instant>, SupervisorError> {
        let live = self.live();
        if live >= self.target {
            // Nothing to replace: causes left over (a crash during a scale-down, an
            // old generation's boot failure) would misname a later start.
            self.pending.clear();
            return Ok(None);
        }
        if self.opts.chain_reload && self.reloading() {
            // One new worker at a time; the next once the previous one serves.
            let booting = self
                .workers
                .iter()
                .any(|w| w.generation == self.generation && w.phase == Phase::Booting);
            if let Some(at) = self.spawn_retry.filter(|&at| at > Instant::now()) {
                return Ok(Some(at));
            }
            if !booting && !self.try_spawn(worker, Cause::Reload) {
                return Ok(self.spawn_retry);
            }
            return Ok(None);
        }
        if self.boot_failures > 0 {
            // From the failed worker's exit: the newest start of any worker may be a
            // healthy one's from long ago, which made the backoff a flat 200 ms.
            // regression: counted from the failed worker's start, an import that
            // failed after more than the backoff (12.8 s at most) was retried at once,
            // for ever while the others serve.
            let at = phase::respawn_at(
                self.boot_failures,
                self.failed_exit.unwrap_or_else(Instant::now),
            );
            if at > Instant::now() {
                return Ok(Some(at));
            }
        }
        if let Some(at) = self.spawn_retry.filter(|&at| at > Instant::now()) {
            return Ok(Some(at));
        }
        for _ in live..self.target {
            // A replacement starts with the cause of the exit it replaces; with none
            // left, the target grew (SIGTTIN).
            let cause = self.pending.pop_front().unwrap_or(Cause::Scale);
            if !self.try_spawn(worker, cause) {
                return Ok(self.spawn_retry);
            }
        }
        Ok(None)
    }

    /// Starts the `--stats` helper process. It serves the endpoint from the scoreboard
    /// and never forks, so it may run a tokio runtime; the master never does.
    fn spawn_stats(&mut self) -> Result<(), SupervisorError> {
        if self.stats.is_none() {
            return Ok(());
        }
        let master_pid = rustix::process::getpid();
        // SAFETY: postern runs no thread in the master (see `spawn`; a --preload app's
        // own threads hold no lock of postern's). The helper does not touch the Python
        // interpreter a --preload master may hold.
        let child = unsafe { fork() }.map_err(SupervisorError::Fork)?;
        let Some(child) = Pid::from_raw(child) else {
            // The helper has nothing to drain: it goes at once with the master.
            self.leave_master(master_pid, Signal::KILL, false);
            // So `ps -o comm`/`top` tell the helper from the workers.
            let _ = rustix::thread::set_name(c"postern-stats");
            let Some(h) = self.stats.take() else {
                std::process::exit(1)
            };
            let code = match crate::stats::server::serve(h.bound, h.source) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    1
                }
            };
            std::process::exit(code);
        };
        if let Some(h) = &mut self.stats {
            h.pid = Some(child);
            h.started = Instant::now();
        }
        Ok(())
    }

    /// In a child just forked (a worker or the stats helper): exit if the master is
    /// already gone, receive `on_master_death` when it goes, take back the signals the
    /// master handles and drop the master's descriptors.
    fn leave_master(&mut self, master_pid: Pid, on_master_death: Signal, worker: bool) {
        let _ = rustix::process::set_parent_process_death_signal(Some(on_master_death));
        if rustix::process::getppid() != Some(master_pid) {
            std::process::exit(0);
        }
        // A terminal's Ctrl-C reaches the whole process group: the master turns it
        // into one graceful stop, so its children ignore SIGINT. Its Ctrl-\ (SIGQUIT)
        // too: the master kills its children then; the helper, which execs nothing,
        // ignores it (a worker's handler does, see below). Before, the helper dumped
        // core.
        signals::ignore(libc::SIGINT);
        if !worker {
            signals::ignore(libc::SIGQUIT);
            // Nor is the master's stop now for it (the master never sends it there; a
            // group-wide one would kill it at its default action).
            signals::ignore(crate::stop::stop_now_signal());
            // A SIGTERM to the whole group (systemd's KillMode=control-group,
            // supervisord's stopasgroup) reaches the helper too: it serves on (503
            // "postern is stopping" on /ping) while the workers drain, and goes when the
            // master ends it (SIGKILL, or the master's death). regression (probe 319):
            // it died at once, the master logged "restarting it", and /metrics was
            // gone for the drain.
            signals::ignore(libc::SIGTERM);
            // A SIGHUP to the whole group (a closed terminal, `systemctl kill -s HUP`)
            // is the master's reload. regression (probe 385): it killed the helper,
            // and the master restarted it with a WARN.
            signals::ignore(libc::SIGHUP);
        }
        // SIGUSR2 (a worker's stack dump, once it has installed its handler): a
        // group-wide one (`systemctl kill -s USR2`, gunicorn's upgrade habit) reaches
        // every process. regression: its default action killed the stats helper and a
        // worker still importing, which stopped a first start.
        if worker {
            signals::absorb(libc::SIGUSR2);
        } else {
            signals::ignore(libc::SIGUSR2);
        }
        if worker {
            // A worker counts a SIGTERM from now on and acts on it once it serves
            // (crate::stop): stopped while it boots, it must still serve the listen
            // queue of a stopping server, not die with it. SIGINT and SIGHUP (a
            // terminal's, to the whole group) go to the same handler, which ignores
            // them in a worker: unlike SIG_IGN, a handler does not pass on to the
            // programs the app execs. Before the unblocking below, which delivers a
            // SIGTERM the master sent since the fork.
            // A worker that cannot take its stop must not serve (only SIGKILL would
            // stop it): it fails its start, which stops a first start with this
            // error. regression: it booted on, unprotected, and one that still
            // failed later served without ever being ready.
            if let Err(e) = crate::stop::install(false) {
                tracing::error!("{}", super::with_open_files_advice(e.to_string()));
                std::process::exit(3);
            }
        }
        let _ = self.mask.unblock();
        self.sfd = None;
        self.touch = None;
        for w in self.workers.drain(..) {
            drop(w.status);
        }
        // The count of log lines the master dropped came across the fork; the master
        // reports those itself, a child only its own.
        crate::logging::LOG_LINES_DROPPED.store(0, Ordering::Relaxed);
    }

    /// Restarts the stats helper if it died (at most once a second); returns when it
    /// may next be restarted.
    fn keep_stats(&mut self) -> Result<Option<Instant>, SupervisorError> {
        match &self.stats {
            Some(h) if h.pid.is_none() => {
                let at = h.started + STATS_RESTART;
                if Instant::now() >= at {
                    // As for a worker (`try_spawn`): a failed fork does not stop the
                    // master; tried again a second later.
                    if let Err(e) = self.spawn_stats() {
                        tracing::error!(error = %super::with_open_files_advice(e.to_string()), "cannot restart the --stats helper; trying again in 1s");
                        if let Some(h) = &mut self.stats {
                            h.started = Instant::now();
                        }
                        return Ok(Some(Instant::now() + STATS_RESTART));
                    }
                    Ok(None)
                } else {
                    Ok(Some(at))
                }
            }
            _ => Ok(None),
        }
    }

    /// Asks every worker to stop (SIGTERM), or to stop at once (`now`, for that reason:
    /// [`Worker::stop_now`]).
    fn stop_all(&mut self, now: Option<StopNow>) {
        // A lone worker deaf to SIGTERM has no sibling to shut a TCP listener under it
        // once the listen queue is served (the master shuts only Unix ones): it is
        // woken to see its mark at once, as at a drain, not at its next look (up to a
        // second later). Not with siblings: one deaf beside others learns its stop
        // from its listeners shut under it (supervisor.rs
        // a_worker_whose_stop_was_lost_stops_when_its_listeners_are_shut pins that
        // path, which the mark would win); all of them deaf over TCP still wait for
        // their look.
        let alone = self.workers.len() == 1;
        for w in &mut self.workers {
            // A worker already draining (reload, recycling, scale-down, --max-lifetime)
            // had its SIGTERM and finishes its requests; a second one would make it cut
            // them off. (One condemned for --timeout had its SIGTERM with the dump:
            // `term` sends no second one; `now` kills it.)
            let draining = w.phase.draining() || self.board.self_retired(w.slot).is_some();
            if now.is_none() && draining {
                continue;
            }
            // One the master killed at --worker-start-timeout is leaving for that
            // already (its exit is counted as the failed start it is, not the stop's).
            // regression: reaped after the stop began, it was counted cause="stop".
            let cause = if w.start_timed_out {
                Cause::BootFailure
            } else {
                Cause::Stop
            };
            w.mark_retiring(&self.board, cause);
            if let Some(why) = now {
                w.stop_now(&self.board, why);
            } else {
                if alone {
                    w.nudge();
                }
                w.term();
            }
        }
    }

    /// At a stop while other workers serve (they serve the listen queues before they
    /// exit): the workers still importing the app are killed now. They have accepted
    /// nothing and have no lifespan to shut down; the import's end and this give-up
    /// race on the scoreboard, and a worker whose import ended first is left to its
    /// SIGTERM (it may have accepted by now).
    /// regression: such a worker held the stop until it finished its import, and one
    /// whose import hung, for --graceful-timeout plus the ASGI lifespan allowance
    /// (over a minute by default), even for a WSGI app.
    fn abandon_imports(&mut self) {
        let mut pids = Vec::new();
        for w in self
            .workers
            .iter_mut()
            .filter(|w| !w.served && !w.sigkilled)
        {
            if self.board.abandon_import(w.slot) {
                signal(w.pid, Signal::KILL);
                w.sigkilled = true;
                w.abandoned = true;
                pids.push(raw(w.pid));
            }
        }
        if !pids.is_empty() {
            tracing::info!(
                ?pids,
                "stopping: workers still importing the app are killed (they serve nothing; the others serve the listen queue)"
            );
        }
    }

    /// Requests the workers are running (scoreboard): an ASGI worker's lines show 16
    /// of its tasks, its busy count (with `--stats`) all of them.
    /// regression (probe 355): the second signal's line said 16 for 40 tasks.
    fn running(&self) -> usize {
        self.workers
            .iter()
            .map(|w| self.board.running(w.slot).max(self.board.in_flight(w.slot)))
            .sum()
    }

    /// Stops every worker (gracefully unless `now`) and waits for them. An unclean stop
    /// returns [`SupervisorError::CutOff`] with what happened (exit code 1, as the
    /// single process): the master killed workers still draining (second signal,
    /// `--graceful-timeout`), or killed busy ones (SIGQUIT: only the requests count), or
    /// a served worker ended non-zero (its own `--graceful-timeout` passed) or by
    /// another's signal.
    fn stop(
        &mut self,
        first: i32,
        listeners: &[crate::server::listener::Bound],
    ) -> Result<(), SupervisorError> {
        let now = first == libc::SIGQUIT;
        let began = Instant::now();
        // The flag first: a worker reads it when its SIGTERM arrives and then serves the
        // listen queues before it exits (no successor will). Then no new connection
        // may join the queues while the workers drain: otherwise the kernel keeps
        // queueing them on the master's copy of each socket, and resets them all when
        // the master exits last.
        // Before the flag: a worker whose leave deadline has passed is killed now, as
        // the leave's (see `overdue`).
        self.overdue(Instant::now());
        self.board.set_stopping();
        // SIGQUIT: the workers are killed before the listeners are shut, so that none
        // sees them shut first and logs that it lets its requests finish.
        // regression: each said "letting in-flight requests finish (a second signal
        // stops at once)" and was killed 7 ms later.
        if now {
            self.stop_all(Some(StopNow::Quit));
        }
        // Sockets systemd passed stay open in systemd for the next start: left alone.
        for l in listeners.iter().filter(|l| !l.inherited) {
            if let Err(e) = l.refuse_new_connections() {
                tracing::warn!(listener = %l.addr, error = %e, "cannot make the listener refuse new connections");
            }
        }
        self.quitting = now;
        // Before the workers are marked to leave: those that serve will serve the
        // listen queues before they exit (`serves_queue`).
        // regression: a worker that retired itself in this same turn of the loop
        // counted as serving, so the replacement still importing was killed and the
        // connections waiting in the listen queue were closed unanswered (nginx: 502),
        // with the stop exiting 0.
        let others_serve = self.workers.iter().any(|w| self.serves_queue(w));
        if !now {
            self.stop_all(None);
            if others_serve {
                self.abandon_imports();
            }
        }
        // An ASGI worker's lifespan shutdown may run past --graceful-timeout after its
        // requests were cut off (past_graceful): not killed before it is done. A worker
        // known to serve WSGI, or still importing the app, has no such shutdown: killed
        // a second after --graceful-timeout, as with --interface wsgi.
        // regression: with --interface auto (the default) the master waited the ASGI
        // allowance (over a minute) for a WSGI worker that did not leave (its atexit
        // hung, or it ignored SIGTERM).
        // Each worker cuts its own requests off at its own generation's
        // --graceful-timeout; the master's kill comes after the longest of them (and of
        // the master's own), one deadline for all: a worker of a shorter generation that
        // hangs past its own is killed at that later deadline, not at its own.
        let longest = |f: fn(&Options) -> Duration| {
            std::iter::once(&self.opts)
                .chain(self.workers.iter().map(|w| &w.opts))
                .map(|o| f(o))
                .max()
                .unwrap_or_default()
        };
        let wsgi_deadline = Instant::now() + longest(|o| o.graceful_timeout) + LEAVE_MARGIN;
        let mut wsgi_due = Some(wsgi_deadline);
        let mut deadline = Some(wsgi_deadline + longest(|o| o.past_graceful));
        loop {
            let _ = self.reap();
            if self.workers.is_empty() {
                break;
            }
            if wsgi_due.is_some_and(|d| Instant::now() > d) {
                wsgi_due = None;
                let board = Arc::clone(&self.board);
                let (mut left, mut starting, mut requests) = (0, 0, 0);
                for w in self
                    .workers
                    .iter_mut()
                    .filter(|w| !board.serves_asgi(w.slot) && !w.sigkilled)
                {
                    signal(w.pid, Signal::KILL);
                    w.sigkilled = true;
                    w.late = true;
                    left += 1;
                    starting += usize::from(!w.served);
                    requests += board.running(w.slot);
                }
                if left > 0 {
                    // `starting`: of them, never ready (an import that hangs).
                    tracing::warn!(
                        left,
                        starting,
                        requests,
                        "WSGI workers still running after --graceful-timeout; killing them"
                    );
                }
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                tracing::warn!(
                    left = self.workers.len(),
                    requests = self.running(),
                    "workers still running after --graceful-timeout (and an ASGI lifespan shutdown); stopping them at once, killing them if still there 1.5 s later"
                );
                for w in &mut self.workers {
                    w.late = true;
                }
                self.stop_all(Some(StopNow::Deadline));
                // SIGCHLD says when they are gone.
                deadline = None;
            }
            // A worker already leaving when the stop came keeps its own deadline.
            let mut due = earliest(earliest(deadline, wsgi_due), self.overdue(Instant::now()));
            // A worker condemned for --timeout is still killed when its stacks are
            // dumped: its request will not finish, so it must not hold the stop up
            // until --graceful-timeout.
            for w in &mut self.workers {
                if let Phase::Condemned { kill_at } = w.phase {
                    if Instant::now() >= kill_at {
                        w.kill_or_spare(&self.board);
                    } else {
                        due = earliest(due, Some(kill_at));
                    }
                }
            }
            // A worker asked to stop at once (above, or by the stop) is killed if still
            // there a moment later.
            let at = Instant::now();
            for w in &mut self.workers {
                due = earliest(due, w.kill_if_still_there(&self.board, at));
            }
            // Sleep until a signal (SIGCHLD: a worker exited) or the deadline.
            let mut fds = [PollFd::new(self.signals(), PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, timeout_until(due).as_ref());
            // A second TERM/INT while draining: stop now. The same signal as the
            // first within a moment of it is the same stop (`timeout 10 postern`
            // signals postern, then its process group: see stop::SAME_SIGNAL_AGAIN).
            while let Some(s) = self.signals().read() {
                if s == first && began.elapsed() < crate::stop::SAME_SIGNAL_AGAIN {
                    tracing::debug!(signal = %signals::name(s), "the same signal again at once: the same stop");
                    continue;
                }
                if matches!(s, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                    let waiting: usize = self
                        .workers
                        .iter()
                        .map(|w| self.board.waiting(w.slot))
                        .sum();
                    // What still waits in the listen queues (the workers take only
                    // what they can start) is cut off too: counted, then closed. A
                    // socket systemd passed keeps its queue for the next start.
                    let in_listen_queue: usize = listeners
                        .iter()
                        .filter(|l| !l.inherited)
                        .map(|l| l.take_waiting())
                        .sum();
                    self.unclean.listen_queue += in_listen_queue;
                    if self
                        .workers
                        .iter()
                        .any(|w| w.quit.is_some_and(|q| q.why != StopNow::Timeout))
                    {
                        // A third signal (or one after SIGQUIT): the workers already
                        // stop at once, and keep their grace to cut and mark.
                        tracing::warn!(
                            left = self.workers.len(),
                            in_listen_queue,
                            "{} again: the workers already stop at once (one still there 1.5 s after it was asked is killed)",
                            signals::name(s)
                        );
                    } else {
                        tracing::warn!(
                            left = self.workers.len(),
                            requests = self.running(),
                            waiting,
                            in_listen_queue,
                            "second signal: the workers stop now (each cuts and marks what it runs; one still there 1.5 s later is killed)"
                        );
                    }
                    self.stop_all(Some(StopNow::Second(s)));
                } else if s == libc::SIGUSR1 {
                    // The log files are reopened during a stop too (logrotate's
                    // postrotate does not wait for it).
                    crate::logging::reopen();
                    let helper = self.stats.as_ref().and_then(|h| h.pid);
                    for pid in self.workers.iter().map(|w| w.pid).chain(helper) {
                        signal(pid, Signal::USR1);
                    }
                } else if s != libc::SIGCHLD {
                    // regression: SIGHUP, SIGTTIN, SIGTTOU and SIGUSR2 during a stop
                    // were dropped without a word.
                    tracing::warn!("{} ignored: postern is stopping", signals::name(s));
                }
            }
        }
        if let Some(pid) = self.stats.as_mut().and_then(|h| h.pid.take()) {
            signal(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
        tracing::info!("all workers exited");
        // What still waits in the listen queues (the workers leave it there past the
        // stop's end: --graceful-timeout, SIGQUIT) is cut off: taken, closed and
        // counted, not reset unsaid as the master exits.
        let left: usize = listeners
            .iter()
            .filter(|l| !l.inherited)
            .map(|l| l.take_waiting())
            .sum();
        if left > 0 {
            tracing::warn!(
                in_listen_queue = left,
                "connections still waiting in the listen queue as the workers ended: closed unanswered (the front server answers 502 or tries its next upstream)"
            );
            self.unclean.listen_queue += left;
        }
        if self.unclean.any() {
            return Err(SupervisorError::CutOff(self.unclean));
        }
        Ok(())
    }
}

/// What made a stop unclean (exit code 1), counted as it happened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unclean {
    /// Requests running (on the scoreboard) in served workers that ended killed or
    /// non-zero: cut off. An ASGI worker shows its oldest `--threads` tasks at most.
    pub requests: usize,
    /// Requests those workers had accepted whole and not started yet (waiting for a
    /// Python thread, as they last published it during the stop): cut off too.
    /// regression: not counted: "4 requests running" for 12 cut off.
    pub waiting: usize,
    /// Connections still in the listen queues at a second signal, SIGQUIT or
    /// --graceful-timeout (no worker had room to take them), closed unanswered by the
    /// master.
    pub listen_queue: usize,
    /// Served workers the master's SIGKILL ended: still running past
    /// `--graceful-timeout`, or a second signal (not SIGQUIT's, which was asked for).
    pub killed: usize,
    /// Served workers that ended non-zero by themselves (their own
    /// `--graceful-timeout` cut requests off) or killed by a signal from elsewhere.
    pub failed: usize,
}

impl Unclean {
    fn any(&self) -> bool {
        self.requests + self.waiting + self.listen_queue + self.killed + self.failed > 0
    }
}

/// "stopped with requests cut off (1 request running in a worker that ended, ...)", or
/// when nothing was running, "stopped uncleanly: 1 worker killed ...; no request was
/// running".
impl std::fmt::Display for Unclean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        match (self.requests, self.waiting) {
            (0, 0) => {}
            (r, 0) => parts.push(format!(
                "{r} request{} running in the workers that ended",
                plural(r)
            )),
            (r, w) => parts.push(format!(
                "{r} request{} running and {w} accepted, not started yet, in the workers that ended",
                plural(r)
            )),
        }
        if self.listen_queue > 0 {
            parts.push(format!(
                "{} connection{} still waiting in the listen queue, closed unanswered",
                self.listen_queue,
                plural(self.listen_queue)
            ));
        }
        if self.killed > 0 {
            parts.push(format!(
                "{} worker{} stopped at once or killed (past --graceful-timeout, a second signal)",
                self.killed,
                plural(self.killed)
            ));
        }
        if self.failed > 0 {
            parts.push(format!(
                "{} worker{} ended with an error of their own (their own stop cut requests off, or a signal from elsewhere: see above)",
                self.failed,
                plural(self.failed)
            ));
        }
        if self.requests + self.waiting + self.listen_queue > 0 || self.failed > 0 {
            write!(f, "stopped with requests cut off ({})", parts.join(", "))
        } else {
            write!(
                f,
                "stopped uncleanly: {}; no request was running",
                parts.join(", ")
            )
        }
    }
}

/// fork(2) through libc: rustix's fork (its `runtime` feature) skips libc's own
/// bookkeeping (atfork handlers, the cached pid), which the child relies on.
/// Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// The caller runs no other thread of postern's (what a forked child may need to lock
/// is never held across the fork); a --preload app's Python threads are outside that,
/// and the child does not touch Python.
unsafe fn fork() -> std::io::Result<i32> {
    // SAFETY: the caller's promise.
    match crate::forked::master_fork(|| unsafe { libc::fork() }) {
        -1 => Err(std::io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// A worker as [`relieved`] sees it.
#[derive(Clone, Copy)]
struct Candidate {
    /// Of the successor's generation, and serving the queue ([`Master::serves_queue`]:
    /// one that retired itself, perhaps in this same wake-up of the master, which has
    /// not read it yet, is leaving already).
    serving: bool,
    /// Since when it waits for its successor, if it does.
    outgoing: Option<Instant>,
    /// It reached `--max-requests` and accepts nothing while it waits
    /// ([`Scoreboard::paused`]).
    paused: bool,
}

/// [`Master::relieve`]'s choice, as an index in `workers`: the outgoing worker that has
/// waited longest, if more than `target` serve. One that does not serve the queue
/// neither counts nor is chosen.
/// regression: a worker that retired itself still read as serving (successor-first
/// recycling ran before `watch`), so another outgoing worker was drained too, and
/// fewer than --workers served until their successors were ready.
///
/// A worker paused at `--max-requests` goes first (it accepts nothing, while one that
/// asked ahead of its limit still serves), and `on_ready` (a successor is ready) it goes
/// whatever the count: with a sibling gone meanwhile (a crash), the count would keep it
/// waiting, serving nothing, for that sibling's replacement.
/// regression (review 331): the longest waiting went first, so a worker that had asked
/// ahead was drained while a paused one kept its place, and with a crashed sibling the
/// paused one waited for the next successor.
fn relieved(
    workers: impl Iterator<Item = Candidate>,
    target: usize,
    on_ready: bool,
) -> Option<usize> {
    let serving: Vec<(usize, Option<Instant>, bool)> = workers
        .enumerate()
        .filter(|(_, w)| w.serving)
        .map(|(i, w)| (i, w.outgoing, w.paused))
        .collect();
    let first = |paused_only: bool| {
        serving
            .iter()
            .filter(|&&(_, _, paused)| paused || !paused_only)
            .filter_map(|&(i, asked, paused)| Some((i, asked?, paused)))
            .min_by_key(|&(_, asked, paused)| (!paused, asked))
            .map(|(i, _, _)| i)
    };
    if on_ready {
        if let Some(i) = first(true) {
            return Some(i);
        }
    }
    if serving.len() <= target {
        return None;
    }
    first(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_forked_together_get_lifetimes_spread_over_a_tenth() {
        let limit = Duration::from_secs(3600);
        let drawn: std::collections::BTreeSet<Duration> = (1000..1032)
            .map(|p| lifetime(limit, Pid::from_raw(p).unwrap()))
            .collect();
        assert!(drawn.len() > 24, "{drawn:?}");
        assert!(drawn.iter().all(|d| *d >= limit && *d < limit + limit / 10));
        // The same worker gets the same lifetime at each look.
        let p = Pid::from_raw(4321).unwrap();
        assert_eq!(lifetime(limit, p), lifetime(limit, p));
    }

    fn worker(serving: bool, outgoing: Option<Instant>) -> Candidate {
        Candidate {
            serving,
            outgoing,
            paused: false,
        }
    }

    /// A master of `workers` over a scoreboard of 4 slots, first start over.
    fn master(workers: usize) -> Master {
        let opts = Options {
            workers,
            threads: 1,
            graceful_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            past_graceful: Duration::ZERO,
            timeout: None,
            slow_log: None,
            max_lifetime: None,
            recycles: true,
            chain_reload: false,
            touch_reload: None,
            preload: false,
            app_preloaded: false,
            lifespan_timeout_over_start: None,
            summary: Vec::new(),
            log_level: "info".to_owned(),
            access_log: "-".to_owned(),
        };
        let board = Arc::new(Scoreboard::new(4, 1).unwrap());
        let mut m = Master::new(board, opts, Arc::new(()), None, None, SigSet::of(&[]));
        m.announced = true;
        m
    }

    /// A process to stand for a worker (signals sent to it reach nobody else).
    struct Stand(std::process::Child);

    impl Stand {
        fn new() -> Stand {
            Stand(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap(),
            )
        }

        fn pid(&self) -> Pid {
            Pid::from_raw(self.0.id() as i32).unwrap()
        }

        /// The signal it ended with: SIGKILL if the master killed it, else the SIGTERM
        /// sent here.
        fn end(mut self) -> Option<i32> {
            use std::os::unix::process::ExitStatusExt;
            signal(self.pid(), Signal::TERM);
            self.0.wait().ok()?.signal()
        }
    }

    /// Adds a worker in the next slot, serving (`serving`) or still importing.
    fn add(m: &mut Master, stand: &Stand, serving: bool) -> usize {
        let slot = m.workers.len();
        m.board.reset(slot, 0, m.generation, Cause::Boot);
        let mut w = Worker::new(stand.pid(), m.generation, slot, None, Arc::clone(&m.opts));
        if serving {
            w.phase.ready();
            w.served = true;
            m.board.mark_serving(slot);
        }
        m.workers.push(w);
        slot
    }

    // regression: watch_boots tested `phase == Serving` alone: with the only worker
    // that served having retired itself (--max-requests) since the master last read
    // the scoreboard, its successor still importing past --worker-start-timeout was
    // killed "while the others serve", and nothing served.
    #[test]
    fn a_start_past_its_timeout_is_not_killed_when_the_only_server_retired_itself() {
        for retired in [true, false] {
            let mut m = master(1);
            let (old, new) = (Stand::new(), Stand::new());
            let a = add(&mut m, &old, true);
            let s = add(&mut m, &new, false);
            m.workers[s].started = Instant::now() - Duration::from_secs(2);
            if retired {
                assert!(m.board.retire_self(a, Cause::MaxRequests));
            }
            m.watch_boots();
            assert_eq!(m.workers[s].sigkilled, !retired, "retired: {retired}");
            let _ = old.end();
            assert_eq!(new.end() == Some(libc::SIGKILL), !retired);
        }
    }

    // regression: judge_exit's fleet tested `phase == Serving` alone, so a worker that
    // had just retired itself kept a replacement's 10th failed start in a row from
    // being the crash loop it is (nobody serves).
    #[test]
    fn a_worker_that_retired_itself_does_not_serve_for_judge_exit() {
        let mut m = master(1);
        let stand = Stand::new();
        let a = add(&mut m, &stand, true);
        assert!(m.fleet().others_serve);
        assert!(m.board.retire_self(a, Cause::MaxRequests));
        assert!(!m.fleet().others_serve);
        let f = Fleet {
            boot_failures: phase::CRASH_LOOP - 1,
            ..m.fleet()
        };
        let failed = Departed {
            generation: 0,
            phase: Phase::Booting,
            self_retired: None,
            failed_start: true,
            killed_in_import: false,
            retry: false,
            clean_exit: false,
            timed_out_alone: false,
            died_leaving: false,
        };
        assert_eq!(phase::judge_exit(failed, f).verdict, Verdict::CrashLoop);
        let _ = stand.end();
    }

    // regression: a worker that retired itself in the same wake-up as a successor's
    // ready byte read as serving, so relieve drained another outgoing worker too and
    // capacity fell below --workers. --workers 2: A (outgoing, retired itself), B
    // (outgoing), S (A's successor, ready).
    #[test]
    fn relieves_no_one_for_a_worker_that_retired_itself() {
        let mut m = master(2);
        let stands = [Stand::new(), Stand::new(), Stand::new()];
        let t = Instant::now();
        let a = add(&mut m, &stands[0], true);
        let b = add(&mut m, &stands[1], true);
        let s = add(&mut m, &stands[2], true);
        m.workers[a].outgoing = Some((Cause::MaxRequests, t));
        m.workers[b].outgoing = Some((Cause::MaxRequests, t + Duration::from_millis(5)));
        assert!(m.board.retire_self(a, Cause::MaxRequests));
        m.relieve(m.workers[s].pid, 0);
        assert!(!m.workers[a].termed, "A is leaving already");
        assert!(!m.workers[b].termed, "B was drained");
        assert_eq!(m.workers[b].phase, Phase::Serving);
        for stand in stands {
            let _ = stand.end();
        }
    }

    #[test]
    fn a_silent_worker_is_described_by_its_most_telling_thread() {
        assert_eq!(
            describe_states(&['S', 'T', 'S']),
            "stopped by a signal (SIGSTOP, SIGTSTP, docker pause)"
        );
        assert_eq!(describe_states(&['S', 't']), "stopped by a debugger");
        assert_eq!(
            describe_states(&['S', 'D', 'R']),
            "a thread stuck in the kernel (uninterruptible wait)"
        );
        assert_eq!(
            describe_states(&['S', 'R']),
            "running, but its I/O thread does not beat"
        );
        assert_eq!(describe_states(&[]), "in an unknown state");
    }

    // A failed reload goes back to the settings of the generation that serves; with
    // nothing of the complete one left it goes back to a number (the one before the
    // failed one) that may have none: the newest kept before it stand for it, and
    // stay kept.
    #[test]
    fn a_rollback_takes_back_the_settings_of_the_generation_it_goes_back_to() {
        let mut m = master(2);
        let reloaded = Arc::new(Options {
            workers: 4,
            timeout: Some(Duration::from_secs(3)),
            ..(*m.opts).clone()
        });
        m.gens.insert(
            3,
            Generation {
                opts: Arc::clone(&reloaded),
                settings: Arc::new(()),
                target: 4,
                changed: true,
            },
        );
        (m.generation, m.opts, m.target) = (3, reloaded, 4);
        m.generation = 2;
        m.back_to_settings_of(3);
        assert_eq!((m.opts.workers, m.opts.timeout, m.target), (2, None, 2));
        assert_eq!(m.board.target(), 2);
        m.forget_generations();
        assert!(m.gens.contains_key(&0), "gen 2 runs gen 0's settings");
        assert!(
            !m.gens.contains_key(&3),
            "no worker of the failed one is left"
        );
    }

    // A reload during a reload is compared with, and takes its number of workers
    // from, the generation that serves, not the one it drops; a rollback goes back to
    // that number. regression: --workers 2 and a SIGTTIN (3), reload A (--workers 4)
    // still booting, reload B (--workers 2): B took 2 (A's 4 differed), and when B
    // failed the master went back to gen 0 with 2 workers (B's --workers equalled
    // gen 0's, so its number was not restored): the SIGTTIN was lost. /tmp/rr3.
    #[test]
    fn a_reload_during_a_reload_and_its_rollback_keep_the_serving_number_of_workers() {
        let mut m = master(2);
        let stand = Stand::new();
        add(&mut m, &stand, true);
        m.target = 3; // SIGTTIN
        let with = |m: &Master, workers: usize| Options {
            workers,
            ..(*m.opts).clone()
        };
        let a = with(&m, 4);
        let serving = m.serving_generation();
        assert_eq!(serving, 0);
        m.new_generation(a, Arc::new(()), true, serving);
        assert_eq!((m.generation, m.target), (1, 4));
        // B during A: gen 0 still serves (A's workers are still importing).
        let b = with(&m, 2);
        let serving = m.serving_generation();
        assert_eq!(serving, 0, "compared with the generation that serves");
        m.new_generation(b, Arc::new(()), true, serving);
        assert_eq!((m.generation, m.target), (2, 3));
        assert_eq!(m.board.target(), 3);
        // B fails: back to gen 0, its 3 workers.
        m.generation = 0;
        m.back_to_settings_of(2);
        assert_eq!((m.opts.workers, m.target), (2, 3));
        assert_eq!(m.board.target(), 3);
        // The same when B had kept A's --workers (A set the number, B failed).
        let mut m = master(2);
        add(&mut m, &stand, true);
        m.target = 3;
        let a = with(&m, 4);
        m.new_generation(a, Arc::new(()), true, 0);
        let b = with(&m, 4);
        let serving = m.serving_generation();
        m.new_generation(b, Arc::new(()), true, serving);
        assert_eq!(m.target, 4);
        m.generation = 0;
        m.back_to_settings_of(2);
        assert_eq!(m.target, 3);
        let _ = stand.end();
    }

    // regression: a SIGTTIN during a reload that changed --workers was lost when the
    // reload failed (or a reload during it kept the serving --workers): the rollback
    // took the serving generation's number as it was before the signal.
    #[test]
    fn a_sigttin_during_a_reload_counts_after_its_rollback() {
        let mut m = master(2);
        let stand = Stand::new();
        add(&mut m, &stand, true);
        let with = |m: &Master, workers: usize| Options {
            workers,
            ..(*m.opts).clone()
        };
        let a = with(&m, 4);
        m.new_generation(a, Arc::new(()), true, 0);
        assert_eq!(m.target, 4);
        m.scale(true);
        assert_eq!((m.target, m.board.target()), (5, 5));
        m.generation = 0;
        m.back_to_settings_of(1);
        assert_eq!((m.target, m.board.target()), (3, 3), "2 + the SIGTTIN");
        // A reload during the reload that keeps the serving --workers takes it too,
        // and so does a SIGTTOU.
        let a = with(&m, 4);
        m.new_generation(a, Arc::new(()), true, 0);
        m.scale(true);
        m.scale(false);
        m.scale(false);
        assert_eq!(m.target, 3);
        let b = with(&m, 2);
        let serving = m.serving_generation();
        assert_eq!(serving, 0);
        m.new_generation(b, Arc::new(()), true, serving);
        assert_eq!(m.target, 2, "3, one more, two less");
        let _ = stand.end();
    }

    // regression: a SIGTTOU during a reload to one worker was ignored ('one worker is
    // the least') and lost at the rollback: the serving generation's 3 came back.
    #[test]
    fn a_sigttou_during_a_reload_to_one_worker_counts_after_its_rollback() {
        let mut m = master(3);
        let stand = Stand::new();
        add(&mut m, &stand, true);
        let a = Options {
            workers: 1,
            ..(*m.opts).clone()
        };
        m.new_generation(a, Arc::new(()), true, 0);
        assert_eq!(m.target, 1);
        assert_eq!(m.scale(false), (false, Some(2)));
        assert_eq!((m.target, m.board.target()), (1, 1));
        m.generation = 0;
        m.back_to_settings_of(1);
        assert_eq!((m.target, m.board.target()), (2, 2), "3 - the SIGTTOU");
        // Not during a reload: one worker is the least, nothing moves.
        let mut m = master(1);
        assert_eq!(m.scale(false), (false, None));
        assert_eq!(m.target, 1);
        let _ = stand.end();
    }

    // regression (probe 346): a failed --chain-reload drained its new workers that
    // served; their places, and those of the old workers they had retired, were
    // filled from the code on disk that had just failed.
    #[test]
    fn a_failed_chain_reload_keeps_its_new_workers_that_serve_and_drops_the_others() {
        for chain in [true, false] {
            let mut m = master(2);
            let (old, new, booting) = (Stand::new(), Stand::new(), Stand::new());
            add(&mut m, &old, true);
            let opts = Options {
                chain_reload: chain,
                ..(*m.opts).clone()
            };
            m.new_generation(opts, Arc::new(()), true, 0);
            assert_eq!(m.generation, 1);
            let n = add(&mut m, &new, true);
            let b = add(&mut m, &booting, false);
            m.generation = 0;
            m.back_to_settings_of(1);
            assert_eq!(m.leave_failed_generations(0), usize::from(chain), "{chain}");
            let new_w = &m.workers[n];
            assert_eq!(
                (new_w.generation, new_w.termed),
                if chain { (0, false) } else { (1, true) },
                "{chain}"
            );
            assert!(
                m.workers[b].termed,
                "{chain}: the one still importing leaves"
            );
            assert_eq!(m.live(), if chain { 2 } else { 1 }, "{chain}");
            for s in [old, new, booting] {
                let _ = s.end();
            }
        }
    }

    #[test]
    fn relieves_the_outgoing_worker_that_waited_longest() {
        let t = Instant::now();
        let later = worker(true, Some(t + Duration::from_millis(5)));
        let first = worker(true, Some(t));
        let other_generation = worker(false, Some(t - Duration::from_millis(5)));
        let s = worker(true, None);
        let them = [other_generation, later, first, worker(true, None), s];
        assert_eq!(relieved(them.into_iter(), 3, true), Some(2));
        let (a, b) = (worker(true, Some(t)), worker(true, None));
        assert_eq!(relieved([a, b].into_iter(), 2, true), None);
    }

    #[test]
    fn a_worker_paused_at_its_limit_is_relieved_first_and_by_any_successor() {
        let t = Instant::now();
        let paused = Candidate {
            paused: true,
            ..worker(true, Some(t + Duration::from_millis(5)))
        };
        let asked_ahead = worker(true, Some(t));
        let successor = worker(true, None);
        let them = [asked_ahead, paused, successor];
        assert_eq!(relieved(them.into_iter(), 2, true), Some(1));
        assert_eq!(relieved(them.into_iter(), 2, false), Some(1));
        // A sibling gone: the count is the target, a successor ready relieves it all
        // the same; the turn's surplus check does not.
        let two = [paused, successor];
        assert_eq!(relieved(two.into_iter(), 2, true), Some(0));
        assert_eq!(relieved(two.into_iter(), 2, false), None);
    }

    #[test]
    fn an_unclean_stop_says_what_happened_with_the_counts() {
        let idle = Unclean {
            killed: 2,
            ..Unclean::default()
        };
        assert_eq!(
            idle.to_string(),
            "stopped uncleanly: 2 workers stopped at once or killed (past --graceful-timeout, a second signal); no request was running"
        );
        let cut = Unclean {
            requests: 1,
            failed: 1,
            ..Unclean::default()
        };
        let queued = Unclean {
            requests: 4,
            waiting: 8,
            killed: 2,
            ..Unclean::default()
        };
        assert_eq!(
            queued.to_string(),
            "stopped with requests cut off (4 requests running and 8 accepted, not started yet, in the workers that ended, 2 workers stopped at once or killed (past --graceful-timeout, a second signal))"
        );
        let in_queue = Unclean {
            requests: 4,
            listen_queue: 8,
            killed: 2,
            ..Unclean::default()
        };
        assert_eq!(
            in_queue.to_string(),
            "stopped with requests cut off (4 requests running in the workers that ended, 8 connections still waiting in the listen queue, closed unanswered, 2 workers stopped at once or killed (past --graceful-timeout, a second signal))"
        );
        assert_eq!(
            cut.to_string(),
            "stopped with requests cut off (1 request running in the workers that ended, 1 worker ended with an error of their own (their own stop cut requests off, or a signal from elsewhere: see above))"
        );
    }
}
