//! The scoreboard: memory shared by the master, its workers and the stats helper (an
//! anonymous `MAP_SHARED` mapping made before the first fork; a single process makes
//! one of one slot for `--stats`).
//!
//! ```text
//! [Global: seqlock, folded counters, worker starts/exits, timeouts, ...]
//! [slot 0: SlotHead (320 B) | Line 0 | Line 1 | ...]   one slot per worker,
//! [slot 1: ...]                                          one line per Python thread
//! ```
//!
//! A slot has `max(--threads, TASK_LINES)` lines: a WSGI worker uses its first
//! `--threads` (one per Python thread); an ASGI worker's loop thread writes all of them
//! and shows its oldest tasks there (`crate::asgi::watch`), its tasks in flight and
//! `--max-concurrency` in the head.
//!
//! The head holds what the worker as a whole reports: pid, state and why, requests
//! served, RSS, busy threads, refused requests. Its counters have several writers, so
//! they take locked adds: the busy count two per request (with `--stats`), the refused
//! count only on the refusal itself.
//!
//! A line says whether its thread is busy, since when (CLOCK_MONOTONIC, the same in
//! every process), with which request, and holds that thread's request counters. Only
//! that thread writes its line, so counting a request is a few plain loads and stores
//! (atomics for visibility, no read-modify-write, no lock). The master reads the lines
//! for `--timeout`, `--slow-log` and recycling; the stats endpoint reads everything.
//!
//! Counters never go backwards: when the master reaps a worker it adds the slot's
//! counters to `Global::folded` and frees the slot in one step that readers see whole
//! (a seqlock: the master is its only writer). Totals = folded + every slot in use.

use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::codec::Protocol;
pub use crate::stats::Hold;
use crate::stats::{
    self, Cause, Current, Events, Totals, WorkerState, DURATION_SLOTS, PROTOCOLS, STATUS_CLASSES,
};

/// Longest request description kept (method + path), in bytes.
const DESC: usize = 120;
const DESC_WORDS: usize = DESC / 8;
/// Longest request id kept (as `logging::RequestId` accepts from a front server).
const ID: usize = 64;
const ID_WORDS: usize = ID / 8;

/// Longest configuration summary `/status` shows as published by the master after a
/// reload ([`Scoreboard::publish_summary`]), in bytes.
const SUMMARY: usize = 2048;
const SUMMARY_WORDS: usize = SUMMARY / 8;
/// Between a key and its value, and after each pair, in the published summary.
const SUMMARY_KEY_END: u8 = 0x1f;
const SUMMARY_PAIR_END: u8 = 0x1e;

/// Slot states.
pub const FREE: u32 = 0;
pub const STARTING: u32 = 1;
pub const SERVING: u32 = 2;
/// On its way out: the worker decided to recycle itself (max requests or RSS; the
/// master replaces it now), or the master asked it to drain.
pub const RETIRING: u32 = 3;

/// A worker's import, as the head's `import` says: still running (zeroed memory, and
/// [`Scoreboard::reset`]) ...
pub const IMPORTING: u32 = 0;
/// ... over: the worker goes on to serve (it has not accepted anything before this) ...
pub const IMPORTED: u32 = 1;
/// ... or given up by the master (a stop while others serve the listen queues): the
/// worker must not serve, and is being killed ...
pub const ABANDONED: u32 = 2;
/// ... or, for an ASGI worker, over and its app has answered its lifespan startup
/// (`lifespan.startup.complete` in time): what keeps it from serving now is its event
/// loop, blocked since (a task the startup started, in a sync call).
pub const ANSWERED: u32 = 3;

/// A thread's request counters. `#[repr(C)]` and nothing but `AtomicU64`, so the
/// master can fold and clear them as one array ([`Counters::cells`]).
#[repr(C)]
struct Counters {
    requests: [[AtomicU64; STATUS_CLASSES.len()]; PROTOCOLS.len()],
    duration: [AtomicU64; DURATION_SLOTS],
    duration_ns: AtomicU64,
    bytes: AtomicU64,
    app_errors: [AtomicU64; stats::APP_ERROR_KINDS.len()],
    cut: [AtomicU64; 2],
}

/// Adds `n` to a counter only this thread (or, for `Global`, only the master) writes:
/// a load and a store, no locked instruction.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    fn cells(&self) -> &[AtomicU64] {
        // SAFETY: `Counters` is #[repr(C)] and made only of AtomicU64 (arrays), so it
        // is exactly `size_of / 8` AtomicU64s in a row, suitably aligned.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Counters).cast::<AtomicU64>(),
                std::mem::size_of::<Counters>() / 8,
            )
        }
    }

    /// Counts one finished request (called by the thread that owns the line).
    fn record(&self, protocol: Protocol, served: Option<&crate::wsgi::Served>) {
        let p = stats::protocol_index(protocol);
        let Some(s) = served else {
            // Serving it panicked: no status, connection aborted.
            bump(&self.requests[p][0], 1);
            bump(&self.cut[0], 1);
            return;
        };
        use crate::wsgi::End;
        let (code, cut) = match s.end {
            End::Complete(c) => (c, None),
            End::Incomplete(c) => (c, Some(0)),
            End::ClientGone(c) | End::Stalled(c) | End::Closed(c, _) => (c, Some(1)),
        };
        bump(&self.requests[p][stats::status_class(code)], 1);
        let ns = u64::try_from(s.sent.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        bump(&self.duration[stats::duration_slot(ns)], 1);
        bump(&self.duration_ns, ns);
        bump(&self.bytes, s.sent.bytes);
        if let Some(e) = s.app_error {
            bump(&self.app_errors[e as usize], 1);
        }
        if let Some(i) = cut {
            bump(&self.cut[i], 1);
        }
    }

    /// Counts a request its worker's death cut off (a crash: the worker could not),
    /// running for `ns`: no status is known (`none`), its response aborted. Called by
    /// the master once the worker is gone, so this line has no other writer.
    fn record_lost(&self, protocol: Protocol, ns: u64) {
        bump(&self.requests[stats::protocol_index(protocol)][0], 1);
        bump(&self.duration[stats::duration_slot(ns)], 1);
        bump(&self.duration_ns, ns);
        bump(&self.cut[0], 1);
    }

    /// Counts a request whose response its thread had sent whole (`status`, `bytes`)
    /// when its worker died before the request's end: served, as its end would have
    /// counted it. The master only, as [`Counters::record_lost`].
    fn record_answered(&self, protocol: Protocol, status: u16, bytes: u64, ns: u64) {
        bump(
            &self.requests[stats::protocol_index(protocol)][stats::status_class(status)],
            1,
        );
        bump(&self.duration[stats::duration_slot(ns)], 1);
        bump(&self.duration_ns, ns);
        bump(&self.bytes, bytes);
    }

    fn add_to(&self, t: &mut Totals) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (row, src) in t.requests.iter_mut().zip(&self.requests) {
            for (v, c) in row.iter_mut().zip(src) {
                *v += get(c);
            }
        }
        for (v, c) in t.duration.iter_mut().zip(&self.duration) {
            *v += get(c);
        }
        t.duration_ns += get(&self.duration_ns);
        t.bytes += get(&self.bytes);
        for (v, c) in t.app_errors.iter_mut().zip(&self.app_errors) {
            *v += get(c);
        }
        for (v, c) in t.cut.iter_mut().zip(&self.cut) {
            *v += get(c);
        }
    }
}

/// What the master keeps for the whole server.
#[repr(C)]
struct Global {
    /// Seqlock: odd while the master folds or resets a slot; readers retry.
    seq: AtomicU64,
    /// Slots `[0, high_water)` may be in use (they are taken lowest first).
    high_water: AtomicU64,
    /// 1: count requests (`--stats` is on).
    metrics: AtomicU64,
    /// 1: the server is stopping (no worker will be replaced).
    stopping: AtomicU64,
    /// Counts of the workers that have exited.
    folded: Counters,
    starts: [AtomicU64; Cause::COUNT],
    exits: [AtomicU64; Cause::COUNT],
    timeouts: AtomicU64,
    slow: AtomicU64,
    /// Written by workers (a locked add; rare: only when everything is busy).
    saturated: AtomicU64,
    /// Dropped log lines of the workers that have exited.
    log_dropped: AtomicU64,
    /// The master's own count of dropped log lines (it publishes it as it goes).
    master_log_dropped: AtomicU64,
    /// The number of workers the master keeps (`--workers`, then SIGTTIN/SIGTTOU);
    /// 0 without a master.
    target: AtomicU64,
    /// Refused requests of the workers that have exited (see [`SlotHead::refused`]).
    refused: Refused,
    /// 1 + the newest generation one of whose workers warned that its RSS, once the app
    /// is imported or after its first request, is over `--max-rss` (workers raise it with
    /// an atomic `fetch_max`: the first of a generation warns, the others see it raised).
    rss_warned: AtomicU64,
    /// 1 + the newest generation one of whose workers warned that the app answered a
    /// status code past 599 (raised as `rss_warned` is).
    status_warned: AtomicU64,
    /// 1 + the newest generation one of whose workers warned that the ASGI-only
    /// options do nothing for the WSGI callable it found (raised as `rss_warned` is).
    interface_warned: AtomicU64,
    /// Reloads that ended: `[ok, failed]` (master only).
    reloads: [AtomicU64; 2],
    /// The generation that serves: the newest one all of whose workers served.
    generation: AtomicU64,
    /// The configuration summary of the generation the master runs, once a reload
    /// changed it: its length in bytes (0: the one the stats endpoint was made with),
    /// then the bytes (`key` 0x1f `value` 0x1e ...), written under the seqlock.
    summary_len: AtomicU64,
    summary: [AtomicU64; SUMMARY_WORDS],
}

/// Requests refused before a Python thread, `[protocol][status class]`.
type Refused = [[AtomicU64; STATUS_CLASSES.len()]; PROTOCOLS.len()];

/// One worker's slot header, a whole number of cache lines, so the lines after it
/// start on one.
#[repr(C, align(64))]
pub struct SlotHead {
    pub pid: AtomicI32,
    pub state: AtomicU32,
    /// Requests this worker has served (`--max-requests`).
    pub requests: AtomicU64,
    pub rss_kib: AtomicU64,
    generation: AtomicU64,
    /// Unix time in milliseconds the master started this worker.
    started_ms: AtomicU64,
    /// Python threads running a request (with `--stats`).
    busy: AtomicU32,
    /// Why the worker retires itself ([`Cause::index`]), written before `state`.
    retire_cause: AtomicU32,
    /// Why it was started ([`Cause::index`]).
    start_cause: AtomicU32,
    /// An ASGI worker's `--max-concurrency` (written once at its start); 0: a WSGI
    /// worker, whose capacity is its `--threads`. With it, `busy` counts tasks.
    capacity: AtomicU32,
    /// The worker's count of dropped log lines, as of its last request.
    log_dropped: AtomicU64,
    /// [`IMPORTING`], [`IMPORTED`] or [`ABANDONED`]: who won the race between the
    /// worker's import ending and the master giving up on it; then [`ANSWERED`].
    import: AtomicU32,
    /// 1 + the [`Cause::index`] for which the worker asked the master to start its
    /// successor ahead of its own stop (near `--max-requests`, over `--max-rss`); 0:
    /// it did not. Written by the worker, once.
    successor: AtomicU32,
    /// Requests the worker accepted whole that wait for a Python thread, as it last
    /// published them during its stop ([`crate::wsgi::Monitor::waiting`]).
    waiting: AtomicU32,
    /// Of `waiting`, those the worker named itself as its stop cut them off
    /// ([`crate::wsgi::Monitor::waiting_told`]).
    waiting_told: AtomicU32,
    /// 0, or the [`Hold`] for which the master holds this worker past its recycling
    /// limits (`--max-requests`, `--max-rss` below its hard limit): it leaves once a
    /// successor serves, or a reload drains it ([`Scoreboard::hold`]). Written by the
    /// master, never cleared before the slot is reset.
    held: AtomicU32,
    /// Requests refused before a Python thread ran them: written by whichever thread
    /// refused (the I/O thread, mostly), with a locked add, off the request path.
    refused: Refused,
    /// An ASGI worker's event loop heartbeat under `--timeout`: CLOCK_MONOTONIC
    /// nanoseconds of its loop's last tick (`crate::asgi::beat`); 0 when not watched
    /// (a WSGI worker, no `--timeout`, a loop not serving yet or any more).
    beat: AtomicU64,
    /// The worker's `--threads`, as its generation was started with (a reload may
    /// change it, up to the lines a slot has); 0: [`Scoreboard::python_threads`].
    /// Written by the master before the fork ([`Scoreboard::set_threads`]).
    threads: AtomicU32,
    /// 1 while an ASGI worker's event loop is at its `--max-concurrency` (no place
    /// free: [`Scoreboard::idle_elsewhere`] counts none there); written by its loop
    /// thread as the last place is taken and as one frees, never below the cap.
    at_cap: AtomicU32,
    /// 1 while the worker waits at `--max-requests` for its successor, accepting
    /// nothing (written by the worker: set as it reaches its limit, cleared when it
    /// accepts again, held past it).
    paused: AtomicU32,
    /// What a worker's stop cut off that its lines do not show ([`Scoreboard::tasks_cut`]):
    /// an ASGI loop's tasks (they clear their lines as they end, so the master takes
    /// the larger of the two); the master counts them at the worker's exit.
    cut_tasks: AtomicU32,
    /// Requests a worker's stop cut off while their body was still read (uploads):
    /// on no line, so the master adds them to what its lines and `cut_tasks` say.
    cut_reading: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds of the worker's last heartbeat: its I/O runtime
    /// writes it every second once it serves ([`Scoreboard::heartbeat`]); 0: none yet.
    /// `/status` shows its age, and a worker that should serve but has not beaten
    /// for [`stats::UNRESPONSIVE_AFTER`] as `unresponsive`.
    seen: AtomicU64,
}

/// One Python thread (WSGI), or one of the oldest tasks in flight (ASGI).
#[repr(C, align(64))]
pub struct Line {
    /// CLOCK_MONOTONIC nanoseconds when the current request started; 0 = idle.
    pub since: AtomicU64,
    desc_len: AtomicU32,
    /// [`stats::protocol_index`] of the current request.
    protocol: AtomicU32,
    desc: [AtomicU64; DESC_WORDS],
    /// The current request's id, the one its access line carries (the front server's
    /// `X-Request-Id`, nginx's `$request_id`, when it sent one postern logs, else the
    /// one postern made): so that the master's `--timeout` lines can be joined with
    /// the access log and the front server's log.
    id_len: AtomicU32,
    /// The status of the current request's response once the thread has sent it whole
    /// (0: not yet), with [`Line::answered_bytes`]: a worker that dies before the
    /// request's end is counted (its app's `close()`, which needs the GIL another
    /// thread may hold as it crashes) still counts it as served, not cut off.
    answered: AtomicU32,
    id: [AtomicU64; ID_WORDS],
    answered_bytes: AtomicU64,
    counters: Counters,
}

const _: () = assert!(std::mem::size_of::<SlotHead>() == 320);
const _: () = assert!(std::mem::size_of::<Line>() % 64 == 0);
const _: () = assert!(std::mem::size_of::<Counters>() % 8 == 0);

/// How long [`Scoreboard::read`] waits for the master to finish a fold.
const READ_PATIENCE: Duration = Duration::from_secs(2);

/// Where the first slot starts: after `Global`, on a cache line.
const SLOTS_AT: usize = std::mem::size_of::<Global>().div_ceil(64) * 64;

/// Lines per slot at least, so that an ASGI worker's `/status` shows its oldest 16
/// tasks in flight even with `--threads 1` (and the oldest is always on a line, for
/// `--timeout`). 16 lines of 512 bytes: 8 KiB per worker slot in use.
pub const TASK_LINES: usize = 16;

/// Lines per slot after its thread lines, naming the first requests a stopping worker
/// had read whole and not started yet (published with their count, every 50 ms of its
/// stop), so that the master names them when a `--timeout` kill cuts them off (more
/// are counted). 2 KiB per worker slot.
pub const WAITING_LINES: usize = 4;

/// The shared mapping: a global area, then `slots` slots of a head, `threads` lines
/// and [`WAITING_LINES`] each.
pub struct Scoreboard {
    base: *mut u8,
    len: usize,
    pub slots: usize,
    /// Lines per slot: `max(--threads, TASK_LINES)`; every line is looked at for
    /// `--timeout` and counted in the totals.
    pub threads: usize,
    /// `--threads` at start: the lines a WSGI worker uses (one per Python thread),
    /// unless its slot says otherwise ([`Scoreboard::threads_of`]: a reload's).
    pub python_threads: usize,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

/// What [`Scoreboard::read`] returns: one consistent view of the counters and slots.
pub struct Reading {
    /// The server is stopping.
    pub stopping: bool,
    pub totals: Totals,
    pub events: Events,
    pub workers: Vec<stats::Worker>,
    pub log_lines_dropped: u64,
    /// The number of workers the master keeps, if a master published it.
    pub target: Option<usize>,
    /// The configuration summary the master published after a reload, if it did.
    pub summary: Option<Vec<(String, String)>>,
}

impl Scoreboard {
    fn slot_size(threads: usize) -> usize {
        std::mem::size_of::<SlotHead>() + (threads + WAITING_LINES) * std::mem::size_of::<Line>()
    }

    /// Maps a zeroed shared region (before forking) for workers of `python_threads`
    /// threads each.
    pub fn new(slots: usize, python_threads: usize) -> std::io::Result<Scoreboard> {
        let threads = python_threads.max(TASK_LINES);
        let len = SLOTS_AT + slots * Self::slot_size(threads);
        let base = crate::shared_mem::map_shared(len)?;
        Ok(Scoreboard {
            base: base.as_ptr().cast(),
            len,
            slots,
            threads,
            python_threads,
        })
    }

    /// The scoreboard of a single process (no master) with `--stats`: one slot, this
    /// process, starting (until [`Scoreboard::mark_serving`]).
    pub fn standalone(threads: usize) -> std::io::Result<Scoreboard> {
        let sb = Scoreboard::new(1, threads.max(1))?;
        sb.reset(0, std::process::id() as i32, 0, Cause::Boot);
        sb.set_metrics(true);
        sb.count_start(Cause::Boot);
        Ok(sb)
    }

    fn global(&self) -> &Global {
        // SAFETY: the mapping starts with a `Global`; zeroed memory is a valid state
        // for every atomic field; page-aligned.
        unsafe { &*(self.base as *const Global) }
    }

    pub fn head(&self, slot: usize) -> &SlotHead {
        assert!(slot < self.slots);
        // SAFETY: in bounds; zero-initialised, a valid state for every atomic field;
        // aligned: SLOTS_AT and slot sizes are multiples of 64.
        unsafe {
            &*(self
                .base
                .add(SLOTS_AT + slot * Self::slot_size(self.threads))
                .cast::<SlotHead>())
        }
    }

    pub fn line(&self, slot: usize, thread: usize) -> &Line {
        assert!(slot < self.slots && thread < self.threads);
        self.any_line(slot, thread)
    }

    /// The ids of the requests on `slot`'s lines that have run longer than `limit`
    /// (what the master's `--timeout` condemned the worker for), each with how long
    /// past the limit it is.
    /// The lines of the worker in `slot` whose request ran longer than `limit`.
    pub fn overdue_lines(&self, slot: usize, limit: Duration) -> Vec<usize> {
        let now = now_ns();
        (0..self.threads)
            .filter(|&t| {
                let since = self.line(slot, t).since.load(Ordering::Acquire);
                since != 0 && Duration::from_nanos(now.saturating_sub(since)) > limit
            })
            .collect()
    }

    pub fn overdue_ids(&self, slot: usize, limit: Duration) -> Vec<(String, Duration)> {
        let now = now_ns();
        (0..self.threads)
            .map(|t| self.line(slot, t))
            .filter_map(|l| {
                let since = l.since.load(Ordering::Acquire);
                let ran = Duration::from_nanos(now.saturating_sub(since));
                (since != 0 && ran > limit).then(|| (l.request_id(), ran - limit))
            })
            .filter(|(id, _)| id != "-")
            .collect()
    }

    /// The `i`th of the requests the worker in `slot` had read whole and not started,
    /// as it last published them during its stop ([`WAITING_LINES`]: the first few).
    pub fn waiting_line(&self, slot: usize, i: usize) -> &Line {
        assert!(slot < self.slots && i < WAITING_LINES);
        self.any_line(slot, self.threads + i)
    }

    /// Line `n` of `slot`: its thread lines, then its waiting lines.
    fn any_line(&self, slot: usize, n: usize) -> &Line {
        // SAFETY: as in `head`.
        unsafe {
            &*(self
                .base
                .add(
                    SLOTS_AT
                        + slot * Self::slot_size(self.threads)
                        + std::mem::size_of::<SlotHead>(),
                )
                .cast::<Line>()
                .add(n))
        }
    }

    /// Runs `f` as one step readers of [`Scoreboard::read`] see whole (master only).
    fn write_section(&self, f: impl FnOnce()) {
        let g = self.global();
        let s = g.seq.load(Ordering::Relaxed);
        g.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        g.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// True for the first worker of its generation to ask: the warning that a worker is
    /// over `--max-rss` from the start (once its app is imported, or after its first
    /// request) is logged once per generation, not by every worker nor by each
    /// replacement (which, over it, come after every request).
    pub fn first_to_warn_rss(&self, slot: usize) -> bool {
        let mark = self.head(slot).generation.load(Ordering::Relaxed) + 1;
        self.global().rss_warned.fetch_max(mark, Ordering::Relaxed) < mark
    }

    /// Whether the worker in `slot` is the first of its generation to warn that the app
    /// answered a status code past 599: once per generation, as [`Self::first_to_warn_rss`],
    /// not again from every worker a recycle (--max-requests, --max-rss) starts.
    pub fn first_to_warn_status(&self, slot: usize) -> bool {
        let mark = self.head(slot).generation.load(Ordering::Relaxed) + 1;
        self.global()
            .status_warned
            .fetch_max(mark, Ordering::Relaxed)
            < mark
    }

    /// Whether the worker in `slot` is the first of its generation to warn that the
    /// ASGI-only options set do nothing for a WSGI app (`--interface auto`): once per
    /// generation, as [`Self::first_to_warn_rss`].
    pub fn first_to_warn_interface(&self, slot: usize) -> bool {
        let mark = self.head(slot).generation.load(Ordering::Relaxed) + 1;
        self.global()
            .interface_warned
            .fetch_max(mark, Ordering::Relaxed)
            < mark
    }

    /// Clears a free slot for a new worker of `generation`, started for `cause` (master,
    /// before the fork).
    pub fn reset(&self, slot: usize, pid: i32, generation: u64, cause: Cause) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.write_section(|| {
            let h = self.head(slot);
            h.pid.store(pid, Ordering::SeqCst);
            h.requests.store(0, Ordering::SeqCst);
            h.rss_kib.store(0, Ordering::SeqCst);
            h.generation.store(generation, Ordering::Relaxed);
            h.started_ms.store(started, Ordering::Relaxed);
            h.busy.store(0, Ordering::Relaxed);
            h.capacity.store(0, Ordering::Relaxed);
            h.retire_cause.store(0, Ordering::Relaxed);
            h.start_cause.store(cause.index() as u32, Ordering::Relaxed);
            h.log_dropped.store(0, Ordering::Relaxed);
            h.import.store(IMPORTING, Ordering::SeqCst);
            h.successor.store(0, Ordering::SeqCst);
            h.waiting.store(0, Ordering::Relaxed);
            h.waiting_told.store(0, Ordering::Relaxed);
            h.held.store(0, Ordering::SeqCst);
            h.beat.store(0, Ordering::SeqCst);
            h.threads.store(0, Ordering::Relaxed);
            h.at_cap.store(0, Ordering::Relaxed);
            h.paused.store(0, Ordering::SeqCst);
            h.cut_tasks.store(0, Ordering::Relaxed);
            h.cut_reading.store(0, Ordering::Relaxed);
            h.seen.store(0, Ordering::Relaxed);
            for c in h.refused.iter().flatten() {
                c.store(0, Ordering::Relaxed);
            }
            for t in 0..self.threads {
                let l = self.line(slot, t);
                l.since.store(0, Ordering::SeqCst);
                for c in l.counters.cells() {
                    c.store(0, Ordering::Relaxed);
                }
            }
            for i in 0..WAITING_LINES {
                self.waiting_line(slot, i).since.store(0, Ordering::SeqCst);
            }
            h.state.store(STARTING, Ordering::SeqCst);
            let g = self.global();
            if g.high_water.load(Ordering::Relaxed) <= slot as u64 {
                g.high_water.store(slot as u64 + 1, Ordering::Release);
            }
        });
    }

    /// A reaped worker's slot: its counts join the totals and the slot is free again
    /// (master only; the worker has exited, so its counters are final).
    pub fn release(&self, slot: usize) {
        let g = self.global();
        self.write_section(|| {
            for t in 0..self.threads {
                let src = self.line(slot, t).counters.cells();
                for (d, s) in g.folded.cells().iter().zip(src) {
                    bump(d, s.load(Ordering::Relaxed));
                }
            }
            let h = self.head(slot);
            bump(&g.log_dropped, h.log_dropped.load(Ordering::Relaxed));
            for (d, s) in g.refused.iter().flatten().zip(h.refused.iter().flatten()) {
                bump(d, s.load(Ordering::Relaxed));
            }
            h.state.store(FREE, Ordering::SeqCst);
            h.pid.store(0, Ordering::SeqCst);
        });
    }

    /// The worker in `slot` serves (its ready byte arrived). A worker that already
    /// retired itself stays retiring.
    pub fn mark_serving(&self, slot: usize) {
        let _ = self.head(slot).state.compare_exchange(
            STARTING,
            SERVING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The worker in `slot` has imported the app and is about to serve (called by the
    /// worker, before it accepts anything). False when the master gave up on it first
    /// ([`Scoreboard::abandon_import`]): it must not serve.
    pub fn finish_import(&self, slot: usize) -> bool {
        self.head(slot)
            .import
            .compare_exchange(IMPORTING, IMPORTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The worker in `slot` has finished importing the app (what is left before it
    /// serves is an ASGI lifespan startup, if any).
    pub fn import_over(&self, slot: usize) -> bool {
        matches!(
            self.head(slot).import.load(Ordering::SeqCst),
            IMPORTED | ANSWERED
        )
    }

    /// The ASGI app of the worker in `slot` has answered its lifespan startup (called by
    /// the worker, as the app sends `lifespan.startup.complete` in time).
    pub fn lifespan_answered(&self, slot: usize) {
        let _ = self.head(slot).import.compare_exchange(
            IMPORTED,
            ANSWERED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Whether the ASGI app of the worker in `slot` has answered its lifespan startup
    /// ([`Scoreboard::lifespan_answered`]).
    pub fn answered_lifespan(&self, slot: usize) -> bool {
        self.head(slot).import.load(Ordering::SeqCst) == ANSWERED
    }

    /// The master gives up on the worker in `slot` if it is still importing the app:
    /// true when it was (it has accepted nothing, and will not: the master kills it).
    pub fn abandon_import(&self, slot: usize) -> bool {
        self.head(slot)
            .import
            .compare_exchange(IMPORTING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The master asked the worker in `slot` to drain, for `cause`.
    pub fn mark_draining(&self, slot: usize, cause: Cause) {
        let h = self.head(slot);
        h.retire_cause
            .store(cause.index() as u32, Ordering::Relaxed);
        h.state.store(RETIRING, Ordering::SeqCst);
    }

    /// Whether the master marked the worker in `slot` to leave (a reload, the stop,
    /// scaling down), or the worker itself began to: it has been or is being sent
    /// SIGTERM.
    pub fn leaving(&self, slot: usize) -> bool {
        self.head(slot).state.load(Ordering::SeqCst) == RETIRING
    }

    /// The worker in `slot` stopped accepting (called by the worker). The cause the
    /// master or the worker gave first stays; else it is a stop.
    pub fn stop_serving(&self, slot: usize) {
        let h = self.head(slot);
        if h.state.load(Ordering::SeqCst) != RETIRING {
            h.retire_cause
                .store(Cause::Stop.index() as u32, Ordering::Relaxed);
            h.state.store(RETIRING, Ordering::SeqCst);
        }
    }

    /// The worker recycles itself for `cause` (called by the worker).
    /// False when the slot was already leaving (the master marked it for a reload or
    /// the stop, or the worker's own stop began): then it has its SIGTERM already, and
    /// a second one would cut its requests off.
    pub fn retire_self(&self, slot: usize, cause: Cause) -> bool {
        let h = self.head(slot);
        if h.state.load(Ordering::SeqCst) == RETIRING {
            return false;
        }
        h.retire_cause
            .store(cause.index() as u32, Ordering::Relaxed);
        h.state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s != RETIRING).then_some(RETIRING)
            })
            .is_ok()
    }

    /// The worker in `slot` asks the master to start its successor now, for `cause`
    /// (called by the worker; by the master for `--max-lifetime`): it serves on until
    /// the master tells it to leave, once the successor serves (`/status` shows it
    /// `retiring`). False when it asked already, or is leaving.
    pub fn want_successor(&self, slot: usize, cause: Cause) -> bool {
        let h = self.head(slot);
        h.state.load(Ordering::SeqCst) != RETIRING
            && h.successor
                .compare_exchange(
                    0,
                    cause.index() as u32 + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    /// The master holds the worker in `slot` past its recycling limits, for `why`: it
    /// serves on until a successor is ready or a reload's new workers are (then the
    /// master tells it to leave). A later reason replaces an earlier one (a reload
    /// that fails: its starts failed). True the first time.
    pub fn hold(&self, slot: usize, why: Hold) -> bool {
        self.head(slot).held.swap(why as u32, Ordering::SeqCst) == 0
    }

    /// The starts the master held the worker in `slot` for succeed again (or the
    /// reload is over): the hold ends, and the worker recycles at its limits as usual.
    /// Not for a worker that asked for its successor already: past its limit, it
    /// serves on held until that successor is ready (the master then tells it to
    /// leave), instead of leaving at its next request while the successor imports.
    /// True when a hold ended.
    pub fn unhold(&self, slot: usize) -> bool {
        let h = self.head(slot);
        // Plain loads first: the master calls this every turn of its loop.
        if h.held.load(Ordering::SeqCst) == 0 || h.successor.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let was = h.held.swap(0, Ordering::SeqCst);
        if was == 0 {
            return false;
        }
        // It asked between the two reads (it saw the hold at its limit): it keeps it.
        if h.successor.load(Ordering::SeqCst) != 0 {
            h.held.store(was, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The worker in `slot` waits at `--max-requests` for its successor (`true`), or
    /// accepts again (`false`: the master holds it past its limit).
    pub fn set_paused(&self, slot: usize, paused: bool) {
        self.head(slot)
            .paused
            .store(u32::from(paused), Ordering::SeqCst);
    }

    /// Whether the worker in `slot` waits at `--max-requests` for its successor,
    /// accepting nothing ([`Scoreboard::set_paused`]).
    pub fn paused(&self, slot: usize) -> bool {
        self.head(slot).paused.load(Ordering::SeqCst) != 0
    }

    /// Whether the worker in `slot` is paused at `--max-requests` and stays so until a
    /// successor relieves it: paused and not held. A held worker accepts again once its
    /// pause watch sees the hold (within 20 ms), so it is no longer the one to relieve.
    /// regression (review 333): a worker held in that window still read as paused, and
    /// a successor's ready byte could drain it instead of one that waits.
    pub fn waits_for_successor(&self, slot: usize) -> bool {
        self.paused(slot) && self.held(slot).is_none()
    }

    /// Why the master holds the worker in `slot`, if it does ([`Scoreboard::hold`]).
    pub fn held(&self, slot: usize) -> Option<Hold> {
        match self.head(slot).held.load(Ordering::SeqCst) {
            1 => Some(Hold::StartsFailed),
            2 => Some(Hold::Reload),
            _ => None,
        }
    }

    /// The worker in `slot` has `n` requests accepted whole waiting for a thread (called
    /// by the worker during its stop).
    pub fn set_waiting(&self, slot: usize, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.head(slot).waiting.store(n, Ordering::Relaxed);
    }

    /// A Python thread of the worker in `slot` began a request during its stop: one
    /// fewer waits (one taken from the queue since the last publication would otherwise
    /// count as waiting and as running). Never below zero: a request that did not
    /// wait (served at once by a free thread) takes nothing.
    pub fn waiting_taken(&self, slot: usize) {
        let _ = self
            .head(slot)
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Requests the worker in `slot` had accepted and not started, as last published.
    pub fn waiting(&self, slot: usize) -> usize {
        self.head(slot).waiting.load(Ordering::Relaxed) as usize
    }

    /// The worker in `slot` named `n` of its waiting requests itself.
    pub fn set_waiting_told(&self, slot: usize, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.head(slot).waiting_told.store(n, Ordering::Relaxed);
    }

    /// What [`Scoreboard::set_waiting_told`] said, 0 if nothing.
    pub fn waiting_told(&self, slot: usize) -> usize {
        self.head(slot).waiting_told.load(Ordering::Relaxed) as usize
    }

    /// What the worker in `slot` asked its successor for, if it did.
    pub fn successor_wanted(&self, slot: usize) -> Option<Cause> {
        match self.head(slot).successor.load(Ordering::SeqCst) {
            0 => None,
            n => Cause::from_index(u64::from(n - 1)),
        }
    }

    /// Why the worker in `slot` is leaving (the master's mark or its own), if it is.
    pub fn leaving_for(&self, slot: usize) -> Option<Cause> {
        let h = self.head(slot);
        (h.state.load(Ordering::SeqCst) == RETIRING)
            .then(|| Cause::from_index(u64::from(h.retire_cause.load(Ordering::Relaxed))))
            .flatten()
    }

    /// Why the worker in `slot` retired itself, if it did.
    pub fn self_retired(&self, slot: usize) -> Option<Cause> {
        let h = self.head(slot);
        (h.state.load(Ordering::SeqCst) == RETIRING)
            .then(|| Cause::from_index(u64::from(h.retire_cause.load(Ordering::Relaxed))))
            .flatten()
            .filter(|c| matches!(c, Cause::MaxRequests | Cause::MaxRss))
    }

    /// Turns per-request counting on (`--stats`); workers read it once at start.
    pub fn set_metrics(&self, on: bool) {
        self.global().metrics.store(u64::from(on), Ordering::SeqCst);
    }

    pub fn metrics(&self) -> bool {
        self.global().metrics.load(Ordering::SeqCst) == 1
    }

    /// The server stops: workers that exit now are not replaced.
    pub fn set_stopping(&self) {
        self.global().stopping.store(1, Ordering::SeqCst);
    }

    /// The whole server is stopping (set by the master before it signals the workers).
    pub fn is_stopping(&self) -> bool {
        self.global().stopping.load(Ordering::SeqCst) == 1
    }

    /// Master-side events (the master is the only writer of these).
    pub fn count_start(&self, cause: Cause) {
        bump(&self.global().starts[cause.index()], 1);
    }

    pub fn count_exit(&self, cause: Cause) {
        bump(&self.global().exits[cause.index()], 1);
    }

    /// A reload ended: its new workers serve (`ok`), or they did not start.
    pub fn count_reload(&self, ok: bool) {
        bump(&self.global().reloads[usize::from(!ok)], 1);
    }

    /// Publishes the generation that serves (master only).
    pub fn publish_generation(&self, generation: u64) {
        self.global()
            .generation
            .store(generation, Ordering::Relaxed);
    }

    /// `n` requests passed `--timeout` (master only).
    /// The worker in `slot` died on its own (a crash, the OOM killer): each request
    /// its lines still show is counted as cut off ([`Counters::record_lost`]) before its
    /// counts join the totals (master only, the worker gone).
    // regression (probe 385): a crash's requests (nginx's 502s) were in no request
    // metric.
    pub fn count_lost(&self, slot: usize) {
        if !self.metrics() {
            return;
        }
        let now = now_ns();
        for t in 0..self.threads {
            let line = self.line(slot, t);
            let since = line.since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let p = line.protocol.load(Ordering::Relaxed) as usize;
            let protocol = PROTOCOLS.get(p).copied().unwrap_or_default();
            let ns = now.saturating_sub(since);
            match line.answered_whole() {
                Some((status, bytes)) => line.counters.record_answered(protocol, status, bytes, ns),
                None => line.counters.record_lost(protocol, ns),
            }
        }
    }

    pub fn count_timeout(&self, n: u64) {
        bump(&self.global().timeouts, n);
    }

    pub fn count_slow(&self) {
        bump(&self.global().slow, 1);
    }

    /// Publishes the worker's count of dropped log lines (it only grows; threads may
    /// race, so the largest wins).
    pub fn publish_log_drops(&self, slot: usize, dropped: u64) {
        let h = self.head(slot);
        if dropped > h.log_dropped.load(Ordering::Relaxed) {
            h.log_dropped.fetch_max(dropped, Ordering::Relaxed);
        }
    }

    /// A request of the worker in `slot` was refused before a Python thread ran it:
    /// answered `status`, or closed without an answer (`None`).
    pub fn count_refused(&self, slot: usize, protocol: Protocol, status: Option<u16>) {
        let class = status.map_or(0, stats::status_class);
        // postern's own answers are 4xx or 5xx (the metric shows only those and none).
        debug_assert!(
            matches!(stats::STATUS_CLASSES[class], "none" | "4xx" | "5xx"),
            "a refusal answered {status:?}"
        );
        self.head(slot).refused[stats::protocol_index(protocol)][class]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the master's count of dropped log lines (master only).
    pub fn publish_master_log_drops(&self, dropped: u64) {
        self.global()
            .master_log_dropped
            .store(dropped, Ordering::Relaxed);
    }

    /// Publishes the configuration summary `/status` shows, as the generation the
    /// master now runs has it (a reload's, or the one a rollback went back to); at
    /// most [`SUMMARY`] bytes: a value too long for what is left (with the pairs after
    /// it) is cut, ending in `…`, or its pair left out if even that does not fit
    /// (master only). regression: the first pair that did not fit dropped every later
    /// one (a long listener list took workers, threads and the timeouts with it).
    pub fn publish_summary(&self, summary: &[(String, String)]) {
        let clean = |s: &str| s.replace([SUMMARY_KEY_END as char, SUMMARY_PAIR_END as char], " ");
        let pairs: Vec<(String, String)> =
            summary.iter().map(|(k, v)| (clean(k), clean(v))).collect();
        // What a pair needs at least: its key and a value cut to 16 bytes.
        let least = |(k, v): &(String, String)| k.len() + v.len().min(16) + 2;
        let mut buf = Vec::with_capacity(SUMMARY);
        for (i, (k, v)) in pairs.iter().enumerate() {
            // Room for this value, leaving the pairs after it what they need at least.
            let after: usize = pairs[i + 1..].iter().map(least).sum();
            let keep = SUMMARY.saturating_sub(buf.len() + k.len() + 2 + after);
            let mut v = v.clone();
            if v.len() > keep {
                const CUT: &str = "…";
                if keep < CUT.len() + 1 {
                    continue;
                }
                let mut end = keep - CUT.len();
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
                v.push_str(CUT);
            }
            buf.extend_from_slice(k.as_bytes());
            buf.push(SUMMARY_KEY_END);
            buf.extend_from_slice(v.as_bytes());
            buf.push(SUMMARY_PAIR_END);
        }
        let n = buf.len();
        buf.resize(SUMMARY, 0);
        let g = self.global();
        self.write_section(|| {
            for (w, word) in g.summary.iter().zip(buf.chunks_exact(8)) {
                let word: [u8; 8] = word.try_into().expect("chunks of 8");
                w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
            }
            g.summary_len.store(n as u64, Ordering::Relaxed);
        });
    }

    /// The summary [`Scoreboard::publish_summary`] wrote, if any.
    fn summary(&self) -> Option<Vec<(String, String)>> {
        let g = self.global();
        let n = (g.summary_len.load(Ordering::Relaxed) as usize).min(SUMMARY);
        if n == 0 {
            return None;
        }
        let mut bytes = Vec::with_capacity(SUMMARY);
        for w in &g.summary {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.truncate(n);
        Some(
            bytes
                .split(|&b| b == SUMMARY_PAIR_END)
                .filter_map(|pair| {
                    let at = pair.iter().position(|&b| b == SUMMARY_KEY_END)?;
                    Some((
                        String::from_utf8_lossy(&pair[..at]).into_owned(),
                        String::from_utf8_lossy(&pair[at + 1..]).into_owned(),
                    ))
                })
                .collect(),
        )
    }

    /// Publishes how many workers the master keeps (master only).
    pub fn publish_target(&self, workers: usize) {
        self.global()
            .target
            .store(workers as u64, Ordering::Relaxed);
    }

    /// The number of workers the master keeps ([`Scoreboard::publish_target`]); 0
    /// without a master.
    pub fn target(&self) -> usize {
        self.global().target.load(Ordering::Relaxed) as usize
    }

    /// The worker about to be forked into `slot` runs `threads` Python threads (its
    /// generation's `--threads`, which a reload may have changed), at most the lines
    /// a slot has (master only, after [`Scoreboard::reset`]).
    pub fn set_threads(&self, slot: usize, threads: usize) {
        let n = threads.clamp(1, self.threads);
        self.head(slot)
            .threads
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::SeqCst);
    }

    /// The Python threads of the worker in `slot` ([`Scoreboard::set_threads`]; else
    /// `--threads` at start), at most the lines a slot has.
    pub fn threads_of(&self, slot: usize) -> usize {
        self.slot_threads(self.head(slot))
    }

    fn slot_threads(&self, h: &SlotHead) -> usize {
        match h.threads.load(Ordering::Relaxed) {
            0 => self.python_threads,
            n => n as usize,
        }
        .min(self.threads)
    }

    /// A Python thread of `slot` took a request (with `--stats`). Counts an "all
    /// threads busy" event when that leaves no idle thread in any serving worker.
    pub fn enter(&self, slot: usize) {
        // SeqCst, so that of two threads taking the last two idle threads at once, at
        // least one sees the other's (a locked add on x86 anyway; the loads stay plain).
        let busy = self.head(slot).busy.fetch_add(1, Ordering::SeqCst) as usize + 1;
        // Other workers are looked at only when this one is full, and the first one
        // with an idle thread ends the look.
        if busy >= self.threads_of(slot) && self.others_full(slot) {
            self.global().saturated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests the worker in `slot` is running, as its lines show them (an ASGI
    /// worker shows its oldest `threads` tasks at most).
    pub fn running(&self, slot: usize) -> usize {
        (0..self.threads)
            .filter(|&t| self.line(slot, t).since.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Python threads of the WSGI worker in `slot` waiting for a request, as its lines
    /// show (a line is busy from the thread's `begin` to its `end`).
    pub fn idle_threads(&self, slot: usize) -> usize {
        (0..self.threads_of(slot))
            .filter(|&t| self.line(slot, t).since.load(Ordering::Acquire) == 0)
            .count()
    }

    /// Idle Python threads of the other serving WSGI workers (see
    /// [`Scoreboard::idle_threads`]), and the free places of the other serving ASGI
    /// workers ([`Scoreboard::free_places`]).
    pub fn idle_elsewhere(&self, slot: usize) -> usize {
        let hw = self.high_water().min(self.slots);
        (0..hw)
            .filter(|&s| s != slot && self.head(s).state.load(Ordering::Acquire) == SERVING)
            .map(|s| {
                if self.serves_asgi(s) {
                    self.free_places(s)
                } else {
                    self.idle_threads(s)
                }
            })
            .sum()
    }

    /// The `--max-concurrency` places of the ASGI worker in `slot` not taken: none at
    /// its cap ([`Scoreboard::set_at_cap`]), else its cap less its tasks as `--stats`
    /// counts them (without it, the whole cap: a request handed to a worker that
    /// reaches its cap meanwhile waits there, and is handed on from there).
    fn free_places(&self, slot: usize) -> usize {
        let h = self.head(slot);
        if h.at_cap.load(Ordering::SeqCst) != 0 {
            return 0;
        }
        self.capacity(h)
            .saturating_sub(h.busy.load(Ordering::Relaxed) as usize)
            .max(1)
    }

    /// The ASGI worker in `slot` took its last `--max-concurrency` place (`full`), or
    /// a place freed (called by its loop thread at those moments only).
    pub fn set_at_cap(&self, slot: usize, full: bool) {
        self.head(slot)
            .at_cap
            .store(u32::from(full), Ordering::SeqCst);
    }

    /// The worker in `slot` serves ASGI: up to `max_concurrency` tasks at once.
    pub fn set_capacity(&self, slot: usize, max_concurrency: usize) {
        let n = u32::try_from(max_concurrency).unwrap_or(u32::MAX);
        self.head(slot).capacity.store(n, Ordering::SeqCst);
    }

    /// The event loop of the worker in `slot` ticked (`on`), or stopped serving: its
    /// heartbeat is no longer watched (called by the worker's loop thread).
    pub fn set_beat(&self, slot: usize, on: bool) {
        let ns = if on { now_ns().max(1) } else { 0 };
        self.head(slot).beat.store(ns, Ordering::Release);
    }

    /// The worker in `slot` is alive and its I/O runtime runs (every second once it
    /// serves): a stopped (SIGSTOP, a debugger) or frozen process beats no more.
    pub fn heartbeat(&self, slot: usize) {
        self.head(slot)
            .seen
            .store(now_ns().max(1), Ordering::Relaxed);
    }

    /// When the worker in `slot` last beat ([`Scoreboard::heartbeat`], CLOCK_MONOTONIC
    /// nanoseconds), if it has since it began to serve.
    pub fn seen(&self, slot: usize) -> Option<u64> {
        match self.head(slot).seen.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// When the event loop of the worker in `slot` last ticked (CLOCK_MONOTONIC
    /// nanoseconds), if its heartbeat is watched ([`Scoreboard::set_beat`]).
    pub fn beat(&self, slot: usize) -> Option<u64> {
        match self.head(slot).beat.load(Ordering::Acquire) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// The worker in `slot` serves ASGI ([`Scoreboard::set_capacity`] at its start).
    pub fn serves_asgi(&self, slot: usize) -> bool {
        self.head(slot).capacity.load(Ordering::SeqCst) != 0
    }

    /// An ASGI task of `slot` started (with `--stats`): as [`Scoreboard::enter`],
    /// with the worker full at its `--max-concurrency` tasks, not at its threads.
    pub fn enter_task(&self, slot: usize) {
        let h = self.head(slot);
        let busy = h.busy.fetch_add(1, Ordering::SeqCst) as usize + 1;
        if busy >= self.capacity(h) && self.others_full(slot) {
            self.global().saturated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests the worker can run at once: its tasks (ASGI) or threads (WSGI).
    fn capacity(&self, h: &SlotHead) -> usize {
        match h.capacity.load(Ordering::Relaxed) {
            0 => self.slot_threads(h),
            n => n as usize,
        }
    }

    /// Requests the worker in `slot` runs as its busy count has them: every task of an
    /// ASGI worker, not only the ones its lines show (with `--stats`; 0 without).
    pub fn in_flight(&self, slot: usize) -> usize {
        self.head(slot).busy.load(Ordering::Acquire) as usize
    }

    /// A stopping worker cut off `tasks` requests whose lines have cleared or may
    /// clear (an ASGI loop's cancelled tasks) and `reading` whose body was still being
    /// read, on no line (written by the worker as it exits).
    pub fn tasks_cut(&self, slot: usize, tasks: usize, reading: usize) {
        let h = self.head(slot);
        h.cut_reading.store(
            u32::try_from(reading).unwrap_or(u32::MAX),
            Ordering::Release,
        );
        h.cut_tasks
            .store(u32::try_from(tasks).unwrap_or(u32::MAX), Ordering::Release);
    }

    /// What [`Scoreboard::tasks_cut`] said of the tasks, 0 if nothing.
    pub fn cut_tasks(&self, slot: usize) -> usize {
        self.head(slot).cut_tasks.load(Ordering::Acquire) as usize
    }

    /// What [`Scoreboard::tasks_cut`] said of the requests still being read.
    pub fn cut_reading(&self, slot: usize) -> usize {
        self.head(slot).cut_reading.load(Ordering::Acquire) as usize
    }

    /// A Python thread of `slot` finished its request (with `--stats`).
    pub fn leave(&self, slot: usize) {
        self.head(slot).busy.fetch_sub(1, Ordering::Relaxed);
    }

    fn others_full(&self, slot: usize) -> bool {
        let hw = self.high_water().min(self.slots);
        (0..hw).filter(|&s| s != slot).all(|s| {
            let h = self.head(s);
            h.state.load(Ordering::Relaxed) != SERVING
                || h.busy.load(Ordering::SeqCst) as usize >= self.capacity(h)
        })
    }

    fn high_water(&self) -> usize {
        self.global().high_water.load(Ordering::Acquire) as usize
    }

    /// Everything at one moment: totals (folded + live slots), events, workers. Retries
    /// while the master is folding; gives its last attempt after a bounded wait.
    pub fn read(&self) -> Reading {
        let g = self.global();
        // A fold takes microseconds, but the master can be preempted in the middle of
        // one: past the first yields, wait in milliseconds. A torn reading would count
        // a slot twice or not at all, and a counter that then goes back looks like a
        // restart to Prometheus (a spike in rate()); only a master stopped mid-fold
        // (SIGSTOP, a debugger) gets one, after READ_PATIENCE.
        let deadline = std::time::Instant::now() + READ_PATIENCE;
        let mut attempt = 0u32;
        loop {
            let s1 = g.seq.load(Ordering::Acquire);
            let reading = self.read_once();
            fence(Ordering::Acquire);
            let s2 = g.seq.load(Ordering::Relaxed);
            if (s1 == s2 && s1 % 2 == 0) || std::time::Instant::now() >= deadline {
                return reading;
            }
            attempt += 1;
            if attempt < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn read_once(&self) -> Reading {
        let g = self.global();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut totals = Totals::default();
        g.folded.add_to(&mut totals);
        add_refused(&g.refused, &mut totals);
        let mut events = Events {
            timeouts: get(&g.timeouts),
            slow: get(&g.slow),
            saturated: get(&g.saturated),
            reloads: [get(&g.reloads[0]), get(&g.reloads[1])],
            generation: get(&g.generation),
            ..Events::default()
        };
        for (v, c) in events.starts.iter_mut().zip(&g.starts) {
            *v = get(c);
        }
        for (v, c) in events.exits.iter_mut().zip(&g.exits) {
            *v = get(c);
        }
        let now = now_ns();
        let mut log_lines_dropped = get(&g.log_dropped) + get(&g.master_log_dropped);
        let mut workers = Vec::new();
        for slot in 0..self.high_water().min(self.slots) {
            let h = self.head(slot);
            let successor = h.successor.load(Ordering::Acquire);
            let state = match h.state.load(Ordering::Acquire) {
                STARTING => WorkerState::Starting,
                SERVING if successor > 0 => WorkerState::Retiring,
                SERVING => WorkerState::Serving,
                RETIRING => WorkerState::Draining,
                _ => continue,
            };
            let leaving = match state {
                WorkerState::Draining => {
                    Cause::from_index(u64::from(h.retire_cause.load(Ordering::Relaxed)))
                }
                WorkerState::Retiring => Cause::from_index(u64::from(successor - 1)),
                WorkerState::Starting | WorkerState::Serving => None,
            };
            let capacity = h.capacity.load(Ordering::Relaxed) as usize;
            // WSGI: one entry per Python thread; ASGI: the tasks on lines.
            let shown = if capacity > 0 {
                self.threads
            } else {
                self.slot_threads(h)
            };
            let mut threads = Vec::with_capacity(shown);
            for t in 0..self.threads {
                let line = self.line(slot, t);
                line.counters.add_to(&mut totals);
                if t < shown {
                    threads.push(line.current(now));
                }
            }
            let tasks = (capacity > 0).then(|| stats::Tasks {
                in_flight: h.busy.load(Ordering::Relaxed) as usize,
                max_concurrency: capacity,
            });
            log_lines_dropped += get(&h.log_dropped);
            add_refused(&h.refused, &mut totals);
            let rss = h.rss_kib.load(Ordering::Relaxed);
            let seen = h.seen.load(Ordering::Relaxed);
            workers.push(stats::Worker {
                slot,
                pid: h.pid.load(Ordering::Relaxed),
                generation: h.generation.load(Ordering::Relaxed),
                state,
                started_unix: h.started_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                start_cause: Cause::from_index(u64::from(h.start_cause.load(Ordering::Relaxed)))
                    .unwrap_or(Cause::Boot),
                leaving,
                // Only while it accepts: one on its way out is held no more.
                held: self.held(slot).filter(|_| state.accepts()),
                paused: self.paused(slot) && self.held(slot).is_none() && state.accepts(),
                requests: h.requests.load(Ordering::Relaxed),
                rss_bytes: (rss > 0).then_some(rss * 1024),
                threads,
                tasks,
                last_seen: (seen > 0).then(|| Duration::from_nanos(now.saturating_sub(seen))),
            });
        }
        Reading {
            stopping: get(&g.stopping) == 1,
            totals,
            events,
            workers,
            log_lines_dropped,
            target: usize::try_from(get(&g.target)).ok().filter(|&n| n > 0),
            summary: self.summary(),
        }
    }
}

fn add_refused(counts: &Refused, t: &mut Totals) {
    for (row, src) in t.refused.iter_mut().zip(counts) {
        for (v, c) in row.iter_mut().zip(src) {
            *v += c.load(Ordering::Relaxed);
        }
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `new`.
        unsafe {
            let _ = rustix::mm::munmap(self.base.cast(), self.len);
        }
    }
}

impl Line {
    /// Marks the thread busy with a request: `method`, `target` (REQUEST_URI), over
    /// `protocol`; the description keeps their first 120 bytes.
    pub fn begin(&self, method: &[u8], target: &[u8], protocol: Protocol) {
        let mut buf = [0u8; DESC];
        let m = method.len().min(DESC);
        buf[..m].copy_from_slice(&method[..m]);
        let mut n = m;
        if n < DESC {
            buf[n] = b' ';
            n += 1;
        }
        let t = target.len().min(DESC - n);
        buf[n..n + t].copy_from_slice(&target[..t]);
        n += t;
        // Only the words that hold the description: `desc_len` bounds every read.
        for (w, word) in self
            .desc
            .iter()
            .zip(buf.chunks_exact(8))
            .take(n.div_ceil(8))
        {
            let word: [u8; 8] = word.try_into().expect("chunks of 8");
            w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        self.desc_len.store(n as u32, Ordering::Relaxed);
        self.protocol
            .store(stats::protocol_index(protocol) as u32, Ordering::Relaxed);
        self.answered.store(0, Ordering::Relaxed);
        self.since.store(now_ns().max(1), Ordering::Release);
    }

    /// The current request's response went out whole: `status`, `bytes` (head and
    /// body). Read by the master ([`Line::answered_whole`]): to count the request once
    /// the worker is gone ([`Scoreboard::count_lost`]), and to name one a kill cuts
    /// off.
    pub fn answered(&self, status: u16, bytes: u64) {
        self.answered_bytes.store(bytes, Ordering::Relaxed);
        // Release: a reader that sees the status sees its bytes.
        self.answered.store(u32::from(status), Ordering::Release);
    }

    /// The current request's response as [`Line::answered`] marked it sent whole
    /// (status, bytes); None before that (over FastCGI, until its END_REQUEST, which
    /// comes after the app's `close()`).
    pub fn answered_whole(&self) -> Option<(u16, u64)> {
        let status = u16::try_from(self.answered.load(Ordering::Acquire)).ok()?;
        (status != 0).then(|| (status, self.answered_bytes.load(Ordering::Relaxed)))
    }

    /// The id of the request about to begin (empty: none); before
    /// [`Line::begin`], which publishes it.
    pub fn set_request_id(&self, id: &[u8]) {
        let n = id.len().min(ID);
        let mut buf = [0u8; ID];
        buf[..n].copy_from_slice(&id[..n]);
        for (w, word) in self.id.iter().zip(buf.chunks_exact(8)).take(n.div_ceil(8)) {
            let word: [u8; 8] = word.try_into().expect("chunks of 8");
            w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        self.id_len.store(n as u32, Ordering::Relaxed);
    }

    /// The current request's id, or "-" (best effort).
    pub fn request_id(&self) -> String {
        let n = (self.id_len.load(Ordering::Relaxed) as usize).min(ID);
        if n == 0 {
            return "-".to_owned();
        }
        let mut bytes = Vec::with_capacity(ID);
        for w in &self.id {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.truncate(n);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// As [`Line::begin`] for a request running since `since` (CLOCK_MONOTONIC ns):
    /// an ASGI task moved onto a line an older task left.
    pub fn begin_at(&self, method: &[u8], target: &[u8], protocol: Protocol, since: u64) {
        self.begin(method, target, protocol);
        self.since.store(since.max(1), Ordering::Release);
    }

    /// Counts a finished request that came in over `protocol` on this line's counters
    /// (ASGI: the loop thread writes every line of its worker).
    pub fn count_for(&self, protocol: Protocol, served: Option<&crate::wsgi::Served>) {
        self.counters.record(protocol, served);
    }

    /// Counts the request this thread just finished (with `--stats`).
    pub fn count(&self, served: Option<&crate::wsgi::Served>) {
        let p = self.protocol.load(Ordering::Relaxed) as usize;
        let protocol = PROTOCOLS.get(p).copied().unwrap_or_default();
        self.counters.record(protocol, served);
    }

    pub fn end(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// When its running request began (CLOCK_MONOTONIC ns, [`now_ns`]); 0 when idle.
    pub fn since_ns(&self) -> u64 {
        self.since.load(Ordering::Acquire)
    }

    /// The request description (best effort).
    pub fn desc(&self) -> String {
        let n = (self.desc_len.load(Ordering::Relaxed) as usize).min(DESC);
        let mut bytes = Vec::with_capacity(DESC);
        for w in &self.desc {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.truncate(n);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The running request, or `None` when idle (best effort: a torn read can at worst
    /// misname the request).
    fn current(&self, now: u64) -> Option<Current> {
        let since = self.since.load(Ordering::Acquire);
        if since == 0 {
            return None;
        }
        let desc = self.desc();
        let (method, path) = desc.split_once(' ').unwrap_or((desc.as_str(), ""));
        let p = self.protocol.load(Ordering::Relaxed) as usize;
        Some(Current {
            method: method.to_owned(),
            path: path.to_owned(),
            protocol: PROTOCOLS.get(p).copied().unwrap_or_default(),
            age: Duration::from_nanos(now.saturating_sub(since)),
        })
    }
}

/// The memory page size, in bytes.
pub fn page_size() -> u64 {
    // From libc, not rustix: rustix reads it from the auxiliary vector and checks the
    // vDSO's ELF header there, which crashes under valgrind (benches/metrics_cost.py).
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// CLOCK_MONOTONIC in nanoseconds (shared by all processes of the machine).
pub fn now_ns() -> u64 {
    // libc's clock_gettime (the vDSO through glibc) rather than rustix's own vDSO
    // lookup, which crashes under valgrind (benches/metrics_cost.py runs postern there).
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wsgi::{AppError, End, Sent, Served};
    use std::time::Instant;

    fn served(end: End, bytes: u64) -> Served {
        Served {
            end,
            sent: Sent {
                bytes,
                started: Instant::now(),
                late: false,
                cut: false,
                closed_by: None,
            },
            app_error: None,
        }
    }

    #[test]
    fn lines_record_requests() {
        let sb = Scoreboard::new(2, 3).unwrap();
        sb.reset(1, 42, 0, Cause::Boot);
        let l = sb.line(1, 2);
        assert_eq!(l.since.load(Ordering::SeqCst), 0);
        assert_eq!(l.request_id(), "-");
        l.set_request_id(b"5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e");
        l.begin(b"GET", b"/a/very/long/path?with=query", Protocol::FastCgi);
        assert_eq!(l.request_id(), "5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e");
        assert!(l.since.load(Ordering::SeqCst) > 0);
        assert_eq!(l.desc(), "GET /a/very/long/path?with=query");
        let w = &sb.read().workers[0]; // slot 0 is free
        let cur = w.threads[2].as_ref().unwrap();
        assert_eq!(
            (cur.method.as_str(), cur.path.as_str(), cur.protocol),
            ("GET", "/a/very/long/path?with=query", Protocol::FastCgi)
        );
        l.end();
        assert_eq!(l.since.load(Ordering::SeqCst), 0);
        assert_eq!(sb.head(1).pid.load(Ordering::SeqCst), 42);
        let long = vec![b'x'; 500];
        l.begin(b"POST", &long, Protocol::Uwsgi);
        assert_eq!(l.desc().len(), DESC);
        assert!(l.desc().starts_with("POST xxx"));
        // A shorter description after a long one reads back alone.
        l.begin(b"GET", b"/", Protocol::Uwsgi);
        assert_eq!(l.desc(), "GET /");
    }

    // regression (review 333): a paused worker the master had just held (its pause
    // watch had not seen the hold yet) could be relieved instead of one that waits.
    #[test]
    fn a_paused_worker_held_no_longer_waits_for_its_successor() {
        let sb = Scoreboard::new(1, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.mark_serving(0);
        assert!(!sb.waits_for_successor(0));
        sb.set_paused(0, true);
        assert!(sb.waits_for_successor(0));
        assert!(sb.hold(0, Hold::StartsFailed));
        assert!(sb.paused(0), "the worker has not seen the hold yet");
        assert!(!sb.waits_for_successor(0));
    }

    // regression: a hold lasted until the worker left, so a worker held while starts
    // failed read `"held": "starts-failed"` for good once they succeeded again.
    #[test]
    fn a_hold_ends_unless_the_worker_asked_for_its_successor() {
        let sb = Scoreboard::new(2, 1).unwrap();
        for slot in 0..2 {
            sb.reset(slot, 10 + slot as i32, 0, Cause::Boot);
            sb.mark_serving(slot);
            assert!(sb.hold(slot, Hold::StartsFailed));
        }
        // Slot 1 passed its limit held: it asked for its successor.
        assert!(sb.want_successor(1, Cause::MaxRequests));
        let held = |sb: &Scoreboard| -> Vec<Option<Hold>> {
            sb.read().workers.iter().map(|w| w.held).collect()
        };
        assert_eq!(held(&sb), [Some(Hold::StartsFailed); 2]);
        assert!(sb.unhold(0));
        assert!(!sb.unhold(0), "once");
        assert!(
            !sb.unhold(1),
            "it serves on held until its successor is ready"
        );
        assert_eq!(sb.held(0), None);
        assert_eq!(held(&sb), [None, Some(Hold::StartsFailed)]);
        // Relieved (told to leave): on its way out it shows no hold.
        sb.mark_draining(1, Cause::MaxRequests);
        assert_eq!(held(&sb), [None, None]);
    }

    #[test]
    fn counts_survive_a_released_slot() {
        let sb = Scoreboard::new(4, 2).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.reset(1, 11, 0, Cause::Boot);
        for (slot, t, code) in [(0, 0, 200), (0, 1, 404), (1, 0, 200), (1, 1, 503)] {
            let l = sb.line(slot, t);
            l.begin(b"GET", b"/", Protocol::Uwsgi);
            l.count(Some(&served(End::Complete(code), 100)));
            l.end();
        }
        let mut failed = served(End::Incomplete(200), 10);
        failed.app_error = Some(AppError::Exception);
        sb.line(1, 0).count(Some(&failed));
        let before = sb.read().totals;
        assert_eq!(before.requests[0][2], 3);
        assert_eq!(before.requests[0][4], 1);
        assert_eq!(before.requests[0][5], 1);
        assert_eq!(before.bytes, 410);
        assert_eq!(before.app_errors, [1, 0, 0]);
        assert_eq!(before.cut, [1, 0]);
        assert_eq!(before.duration.iter().sum::<u64>(), 5);
        // Worker 1 exits and its slot is reused: nothing is lost or counted twice.
        sb.release(1);
        assert_eq!(sb.read().totals, before);
        assert_eq!(sb.read().workers.len(), 1);
        sb.reset(1, 12, 1, Cause::Boot);
        assert_eq!(sb.read().totals, before);
        sb.line(1, 1).count(None);
        let after = sb.read().totals;
        assert_eq!(after.requests[0][0], 1);
        assert_eq!(after.requests(), before.requests() + 1);
        let w = sb.read().workers;
        assert_eq!((w[1].pid, w[1].generation), (12, 1));
    }

    // regression (probe 396 M1): a crash with --threads above 1 counted a request another
    // thread had answered whole, but not ended yet (its close() needs the GIL the
    // crashing thread holds), as status="none" and cut off.
    #[test]
    fn a_crash_counts_a_response_sent_whole_as_served_and_the_others_as_cut() {
        let sb = Scoreboard::new(1, 3).unwrap();
        sb.set_metrics(true);
        sb.reset(0, 10, 0, Cause::Boot);
        // Thread 0: answered whole. Thread 1: running. Thread 2: answered whole by its
        // last request, then began another one (the mark goes with the request).
        sb.line(0, 0).begin(b"GET", b"/done", Protocol::Uwsgi);
        sb.line(0, 0).answered(201, 1234);
        sb.line(0, 1).begin(b"GET", b"/running", Protocol::FastCgi);
        sb.line(0, 2).begin(b"GET", b"/last", Protocol::Uwsgi);
        sb.line(0, 2).answered(200, 10);
        sb.line(0, 2).count(Some(&served(End::Complete(200), 10)));
        sb.line(0, 2).end();
        sb.line(0, 2).begin(b"GET", b"/next", Protocol::Uwsgi);
        sb.count_lost(0);
        sb.release(0);
        let t = sb.read().totals;
        let (uwsgi, fastcgi) = (
            stats::protocol_index(Protocol::Uwsgi),
            stats::protocol_index(Protocol::FastCgi),
        );
        assert_eq!(t.requests[uwsgi][2], 2, "the 201 and the 200 ended earlier");
        assert_eq!(t.requests[uwsgi][0], 1, "/next: none");
        assert_eq!(t.requests[fastcgi][0], 1, "/running: none");
        assert_eq!(t.bytes, 1244);
        assert_eq!(t.cut, [2, 0]);
        assert_eq!(t.duration.iter().sum::<u64>(), 4);
    }

    // regression: a reading gave up after 1000 yields, so a master preempted in the
    // middle of a fold gave a torn reading (a slot counted twice or not at all) and the
    // counters went back at the next scrape.
    #[test]
    fn a_reading_waits_for_a_slow_fold() {
        let sb = std::sync::Arc::new(Scoreboard::new(1, 1).unwrap());
        sb.reset(0, 10, 0, Cause::Boot);
        let l = sb.line(0, 0);
        l.begin(b"GET", b"/", Protocol::Uwsgi);
        l.count(Some(&served(End::Complete(200), 10)));
        l.end();
        let folding = std::sync::Arc::new(std::sync::Barrier::new(2));
        let master = {
            let (sb, folding) = (std::sync::Arc::clone(&sb), std::sync::Arc::clone(&folding));
            std::thread::spawn(move || {
                // `release`, with the master preempted halfway through the fold.
                sb.write_section(|| {
                    let g = sb.global();
                    for (d, s) in g.folded.cells().iter().zip(sb.line(0, 0).counters.cells()) {
                        bump(d, s.load(Ordering::Relaxed));
                    }
                    folding.wait();
                    std::thread::sleep(Duration::from_millis(200));
                    sb.head(0).state.store(FREE, Ordering::SeqCst);
                });
            })
        };
        folding.wait();
        assert_eq!(
            sb.read().totals.requests(),
            1,
            "counted once, before or after"
        );
        master.join().unwrap();
        assert_eq!(sb.read().totals.requests(), 1);
    }

    #[test]
    fn refused_requests_survive_a_released_slot() {
        let sb = Scoreboard::new(2, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.reset(1, 11, 0, Cause::Boot);
        sb.count_refused(0, Protocol::Uwsgi, Some(413));
        sb.count_refused(1, Protocol::Uwsgi, Some(400));
        sb.count_refused(1, Protocol::FastCgi, None);
        let t = sb.read().totals;
        assert_eq!((t.refused[0][4], t.refused[1][0], t.refused()), (2, 1, 3));
        assert_eq!(
            t.requests(),
            0,
            "refusals are not requests the app answered"
        );
        sb.release(1);
        sb.reset(1, 12, 1, Cause::Boot);
        assert_eq!(sb.read().totals, t);
    }

    #[test]
    fn a_published_summary_reads_back_whole_pairs_within_its_size() {
        let sb = Scoreboard::new(1, 1).unwrap();
        assert!(
            sb.read().summary.is_none(),
            "none until a reload publishes one"
        );
        let pairs = vec![
            ("app".to_owned(), "a:b".to_owned()),
            ("threads".to_owned(), "4".to_owned()),
        ];
        sb.publish_summary(&pairs);
        assert_eq!(sb.read().summary, Some(pairs));
        // Too long a value is cut, and the pairs after it are kept.
        // regression: the pairs before it only.
        let long = vec![
            ("app".to_owned(), "x".to_owned()),
            ("listeners".to_owned(), "y".repeat(SUMMARY)),
            ("threads".to_owned(), "4".to_owned()),
        ];
        sb.publish_summary(&long);
        let read = sb.read().summary.unwrap();
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!((&read[0], &read[2]), (&long[0], &long[2]));
        assert!(read[1].1.starts_with("yyy") && read[1].1.ends_with('…'));
        let size: usize = read.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(size <= SUMMARY && size > SUMMARY - 8, "{size}");
    }

    // A reload's workers run their generation's --threads (up to a slot's lines).
    #[test]
    fn a_slot_counts_the_threads_of_its_own_generation() {
        let sb = Scoreboard::new(2, 2).unwrap();
        sb.reset(0, 1, 0, Cause::Boot);
        sb.reset(1, 2, 1, Cause::Reload);
        sb.set_threads(1, 5);
        assert_eq!((sb.threads_of(0), sb.threads_of(1)), (2, 5));
        sb.set_threads(1, 1000);
        assert_eq!(sb.threads_of(1), TASK_LINES, "at most the lines a slot has");
        sb.mark_serving(0);
        sb.mark_serving(1);
        let r = sb.read();
        assert_eq!(
            (r.workers[0].threads.len(), r.workers[1].threads.len()),
            (2, TASK_LINES)
        );
    }

    #[test]
    fn idle_threads_are_counted_from_the_lines_of_serving_workers() {
        let sb = Scoreboard::new(3, 2).unwrap();
        for (slot, pid) in [(0, 10), (1, 11), (2, 12)] {
            sb.reset(slot, pid, 0, Cause::Boot);
        }
        sb.mark_serving(0);
        sb.mark_serving(1);
        assert_eq!(sb.idle_threads(0), 2);
        assert_eq!(
            sb.idle_elsewhere(0),
            2,
            "a starting worker's threads are not counted"
        );
        sb.line(0, 0).begin(b"GET", b"/", Protocol::FastCgi);
        sb.line(0, 1).begin(b"GET", b"/", Protocol::FastCgi);
        assert_eq!(sb.idle_threads(0), 0);
        sb.line(1, 1).begin(b"GET", b"/", Protocol::FastCgi);
        assert_eq!(sb.idle_elsewhere(0), 1);
        assert_eq!(sb.idle_elsewhere(1), 0);
        sb.line(0, 0).end();
        assert_eq!(sb.idle_elsewhere(1), 1);
        sb.mark_draining(1, Cause::Reload);
        assert_eq!(sb.idle_elsewhere(0), 0, "a leaving worker takes nothing");
    }

    #[test]
    fn asgi_workers_below_their_cap_count_their_free_places() {
        // The busy watch hands a request to another ASGI worker only if it has room:
        // before, ASGI workers counted for nothing here.
        let sb = Scoreboard::new(3, 2).unwrap();
        for (slot, pid) in [(0, 10), (1, 11), (2, 12)] {
            sb.reset(slot, pid, 0, Cause::Boot);
            sb.set_capacity(slot, 3);
            sb.mark_serving(slot);
        }
        assert_eq!(sb.idle_elsewhere(0), 6);
        sb.set_at_cap(1, true);
        assert_eq!(sb.idle_elsewhere(0), 3, "one at its cap has no room");
        sb.enter_task(2);
        assert_eq!(sb.idle_elsewhere(0), 2, "its tasks as --stats counts them");
        sb.set_at_cap(1, false);
        assert_eq!(sb.idle_elsewhere(0), 5);
        sb.set_at_cap(1, true);
        sb.reset(1, 13, 1, Cause::Reload);
        sb.set_capacity(1, 3);
        sb.mark_serving(1);
        assert_eq!(
            sb.idle_elsewhere(0),
            5,
            "a new worker in the slot is not at its cap"
        );
    }

    #[test]
    fn all_busy_only_when_every_serving_thread_is() {
        let sb = Scoreboard::new(3, 2).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.reset(1, 11, 0, Cause::Boot);
        sb.mark_serving(0);
        sb.mark_serving(1);
        let saturated = || sb.read().events.saturated;
        sb.enter(0);
        sb.enter(0); // worker 0 full, worker 1 idle
        assert_eq!(saturated(), 0);
        sb.enter(1);
        sb.enter(1); // the last idle thread
        assert_eq!(saturated(), 1);
        sb.leave(1);
        sb.enter(1);
        assert_eq!(saturated(), 2);
        // A starting worker's threads are not capacity yet.
        sb.reset(2, 12, 1, Cause::Boot);
        sb.leave(0);
        sb.enter(0);
        assert_eq!(saturated(), 3);
    }

    #[test]
    fn a_worker_import_either_ends_or_is_abandoned_never_both() {
        let sb = Scoreboard::new(2, 1).unwrap();
        sb.reset(0, 1, 0, Cause::Boot);
        sb.reset(1, 2, 0, Cause::Boot);
        assert!(sb.finish_import(0));
        assert!(!sb.abandon_import(0), "it may have accepted by now");
        assert!(sb.abandon_import(1));
        assert!(
            !sb.finish_import(1),
            "the master kills it: it must not serve"
        );
        // A new worker in the slot imports again.
        sb.release(1);
        sb.reset(1, 3, 1, Cause::Boot);
        assert!(sb.finish_import(1));
    }

    // regression: R7/metrics of the ASGI review: an ASGI worker with --threads 1 was
    // "full" at its first task, so all_threads_busy grew on nearly every request.
    #[test]
    fn an_asgi_worker_is_full_at_its_max_concurrency() {
        let sb = Scoreboard::new(2, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.mark_serving(0);
        sb.set_capacity(0, 3);
        for _ in 0..2 {
            sb.enter_task(0);
        }
        assert_eq!(sb.read().events.saturated, 0);
        sb.enter_task(0);
        assert_eq!(sb.read().events.saturated, 1);
        // Its tasks, not its lines, are what /status counts.
        sb.line(0, 5).begin(b"GET", b"/old", Protocol::Uwsgi);
        let w = &sb.read().workers[0];
        assert_eq!(w.threads.len(), TASK_LINES);
        assert_eq!(
            w.tasks,
            Some(stats::Tasks {
                in_flight: 3,
                max_concurrency: 3
            })
        );
        assert_eq!(w.busy(), 3);
        sb.leave(0);
        assert_eq!(sb.read().workers[0].busy(), 2);
        // A WSGI worker's row shows only its --threads.
        sb.reset(1, 11, 0, Cause::Boot);
        assert_eq!(sb.read().workers[1].threads.len(), 1);
    }

    #[test]
    fn waiting_lines_are_a_slot_s_own_and_cleared_for_its_successor() {
        let sb = Scoreboard::new(2, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.reset(1, 11, 0, Cause::Boot);
        for i in 0..WAITING_LINES {
            sb.waiting_line(0, i)
                .begin(b"GET", format!("/w{i}").as_bytes(), Protocol::Uwsgi);
        }
        // Not a thread line, nor the next slot's head or lines.
        for t in 0..sb.threads {
            assert_eq!(sb.line(0, t).since.load(Ordering::SeqCst), 0);
            assert_eq!(sb.line(1, t).since.load(Ordering::SeqCst), 0);
        }
        assert_eq!(sb.head(1).pid.load(Ordering::SeqCst), 11);
        assert_eq!(
            sb.waiting_line(0, WAITING_LINES - 1).desc(),
            format!("GET /w{}", WAITING_LINES - 1)
        );
        assert_eq!(sb.waiting_line(1, 0).since.load(Ordering::SeqCst), 0);
        sb.reset(0, 12, 0, Cause::Timeout);
        assert_eq!(sb.waiting_line(0, 0).since.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_loop_heartbeat_is_watched_while_it_beats_and_not_after() {
        let sb = Scoreboard::new(2, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        assert_eq!(sb.beat(0), None, "a new worker has no heartbeat");
        let before = now_ns();
        sb.set_beat(0, true);
        assert!(sb.beat(0).is_some_and(|b| b >= before));
        assert_eq!(sb.beat(1), None, "one slot's beat is its own");
        sb.set_beat(0, false);
        assert_eq!(
            sb.beat(0),
            None,
            "a loop that stopped serving is not watched"
        );
        sb.set_beat(0, true);
        sb.reset(0, 11, 0, Cause::Timeout);
        assert_eq!(sb.beat(0), None, "its successor starts unwatched");
    }

    #[test]
    fn a_worker_already_leaving_does_not_retire_itself_again() {
        let sb = Scoreboard::new(1, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.mark_draining(0, Cause::Stop);
        assert!(!sb.retire_self(0, Cause::MaxRequests));
        assert_eq!(sb.self_retired(0), None);
        sb.reset(0, 11, 0, Cause::Boot);
        assert!(sb.retire_self(0, Cause::MaxRequests));
        assert!(!sb.retire_self(0, Cause::MaxRss));
        assert_eq!(sb.self_retired(0), Some(Cause::MaxRequests));
    }

    #[test]
    fn self_retirement_keeps_its_cause() {
        let sb = Scoreboard::new(1, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        assert_eq!(sb.self_retired(0), None);
        sb.retire_self(0, Cause::MaxRss);
        sb.mark_serving(0); // a late ready byte does not undo it
        assert_eq!(sb.self_retired(0), Some(Cause::MaxRss));
        assert_eq!(sb.read().workers[0].state, WorkerState::Draining);
    }

    // regression: a worker whose successor was started (recycling, successor first)
    // read as `serving` until the master drained it: /status and postern_workers did
    // not tell it from the workers that stay.
    #[test]
    fn a_worker_waiting_for_its_successor_shows_as_retiring() {
        let sb = Scoreboard::new(1, 1).unwrap();
        sb.reset(0, 10, 0, Cause::Boot);
        sb.mark_serving(0);
        assert_eq!(sb.read().workers[0].state, WorkerState::Serving);
        assert!(sb.want_successor(0, Cause::MaxRequests));
        let w = &sb.read().workers[0];
        assert_eq!(w.state, WorkerState::Retiring);
        assert!(w.state.accepts());
        assert_eq!(w.leaving, Some(Cause::MaxRequests));
        // The master tells it to leave once its successor serves.
        sb.mark_draining(0, Cause::MaxRequests);
        let w = &sb.read().workers[0];
        assert_eq!(w.state, WorkerState::Draining);
        assert_eq!(w.leaving, Some(Cause::MaxRequests));
    }
}
