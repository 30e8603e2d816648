//! `wsgi.errors`: a text stream whose lines go to postern's log (target `wsgi.errors`,
//! level warn) inside the request's span, so each line names its request; over
//! FastCGI also to the front server as FCGI_STDERR (unless `--no-fastcgi-stderr`).
//!
//! An app must not be able to take the process's memory or log through it:
//! - a line keeps at most [`MAX_LINE`] bytes; the rest is counted, not copied, and the
//!   logged line says how much was cut (a 100 MB `write` costs no 100 MB copy);
//! - each process passes at most `--errors-rate` lines per second (and about 512 bytes
//!   a line: 1 MiB/s at the default 2,000 lines/s), with bursts of twice that ([`Limiter`], two
//!   token buckets). Lines over the rate are dropped, counted, and the count is logged
//!   once a second while the flood lasts and once after it ends: postern's own lines
//!   keep their room in the log's queue (`crate::logging`, 16 Ki lines, lossy).
//!
//! The app's `print()` and `logging` handlers writing to `sys.stdout`/`sys.stderr` do
//! not come here: postern leaves fd 1 and 2 to whoever started it (a terminal, journald,
//! docker), and Python's own buffering there is bounded.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PySlice, PyString};

use super::ErrorsForward;

/// The longest line logged (and forwarded as FCGI_STDERR), in bytes. Far above a normal
/// log line or a traceback line, and small enough that a full log queue of them stays
/// in the tens of MiB.
pub const MAX_LINE: usize = 8 * 1024;

/// `--errors-rate`'s default: lines per second each process passes from `wsgi.errors`.
/// A busy app that logs a few lines per request at 1,000 requests/s stays under it.
pub const DEFAULT_RATE: u32 = 2000;

/// The byte budget per second at the default line rate; other rates in proportion
/// (about 512 bytes a line).
const DEFAULT_BYTES: u64 = 1024 * 1024;

/// A bucket holds this many seconds of its rate: the burst an idle process allows.
const BURST_SECONDS: u64 = 2;

/// How often a flood's dropped lines are counted in the log.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A `write` longer than this (in characters) is read in slices of it, so that no
/// UTF-8 copy of a huge string is made.
const SLICE_CHARS: usize = 64 * 1024;

/// Lines per second per process; 0: no limit. Set once at start-up ([`set_rate`]).
static RATE: AtomicU32 = AtomicU32::new(DEFAULT_RATE);

/// This process's limiter, made on the first line.
static FLOOD: Mutex<Option<Flood>> = Mutex::new(None);

/// Sets `--errors-rate` (before the workers are forked, or before serving).
pub fn set_rate(lines_per_second: u32) {
    RATE.store(lines_per_second, Ordering::Relaxed);
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Pure: the caller
/// says what time it is.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Whether `cost` may pass now. A cost over the burst passes once the bucket is
    /// full, leaving it in debt: a big item is slowed down, never refused for ever.
    fn allows(&mut self, cost: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= (cost as f64).min(self.burst)
    }

    fn spend(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }

    /// Takes `cost` tokens if they are there (see [`Bucket::allows`]).
    pub fn take(&mut self, cost: u64, now: Instant) -> bool {
        let ok = self.allows(cost, now);
        if ok {
            self.spend(cost);
        }
        ok
    }
}

/// What a flood cost: the lines dropped since the last report and over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
    pub over: Duration,
}

/// The rate limit of one process's `wsgi.errors`: a line passes when both the line and
/// the byte bucket allow it; the others are counted until [`Limiter::report`].
#[derive(Debug, Clone)]
pub struct Limiter {
    rate: u64,
    lines: Bucket,
    bytes: Bucket,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// The first drop since the last report.
    since: Option<Instant>,
}

impl Limiter {
    /// `rate` lines per second (and about 512 bytes a line), bursts of twice that.
    pub fn new(rate: u32, now: Instant) -> Limiter {
        let rate = u64::from(rate.max(1));
        Limiter {
            rate,
            lines: Bucket::new(rate, rate * BURST_SECONDS, now),
            bytes: Bucket::new(
                Self::bytes_for(rate),
                Self::bytes_for(rate) * BURST_SECONDS,
                now,
            ),
            dropped_lines: 0,
            dropped_bytes: 0,
            since: None,
        }
    }

    /// Whether a line of `len` bytes may be logged now; if not it is counted.
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        let len = len as u64;
        if self.lines.allows(1, now) && self.bytes.allows(len, now) {
            self.lines.spend(1);
            self.bytes.spend(len);
            return true;
        }
        self.dropped_lines += 1;
        self.dropped_bytes += len;
        self.since.get_or_insert(now);
        false
    }

    /// The drops to report, if any, and resets the count. `due_only`: only once the
    /// first of them is [`REPORT_EVERY`] old (the write path; the reporter thread
    /// takes whatever is there).
    pub fn report(&mut self, now: Instant, due_only: bool) -> Option<Dropped> {
        let since = self.since?;
        let over = now.saturating_duration_since(since);
        if due_only && over < REPORT_EVERY {
            return None;
        }
        let d = Dropped {
            lines: std::mem::take(&mut self.dropped_lines),
            bytes: std::mem::take(&mut self.dropped_bytes),
            over,
        };
        self.since = None;
        Some(d)
    }

    /// The byte budget per second.
    pub fn bytes_per_second(&self) -> u64 {
        Self::bytes_for(self.rate)
    }

    fn bytes_for(rate: u64) -> u64 {
        rate * DEFAULT_BYTES / u64::from(DEFAULT_RATE)
    }
}

/// The process's limiter and whether its reporter thread runs.
struct Flood {
    limiter: Limiter,
    reporter: bool,
}

/// Whether a line of `len` bytes may be logged; logs the count of a flood's drops when
/// one is due.
fn admit(len: usize) -> bool {
    let rate = RATE.load(Ordering::Relaxed);
    if rate == 0 {
        return true;
    }
    let now = Instant::now();
    let mut g = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let flood = g.get_or_insert_with(|| Flood {
        limiter: Limiter::new(rate, now),
        reporter: false,
    });
    let ok = flood.limiter.admit(len, now);
    let due = flood.limiter.report(now, true);
    if !ok && !flood.reporter {
        // Reports the end of the flood even if the app writes nothing more.
        flood.reporter = std::thread::Builder::new()
            .name("postern-errors".into())
            .stack_size(64 * 1024)
            .spawn(report_until_quiet)
            .is_ok();
    }
    let per_second = flood.limiter.bytes_per_second();
    drop(g);
    if let Some(d) = due {
        log_dropped(d, rate, per_second);
    }
    ok
}

/// The reporter thread: logs what was dropped each [`REPORT_EVERY`], and ends after
/// one interval without drops.
fn report_until_quiet() {
    loop {
        std::thread::sleep(REPORT_EVERY);
        let mut g = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
        let Some(flood) = g.as_mut() else { return };
        let Some(d) = flood.limiter.report(Instant::now(), false) else {
            flood.reporter = false;
            return;
        };
        let per_second = flood.limiter.bytes_per_second();
        drop(g);
        log_dropped(d, RATE.load(Ordering::Relaxed), per_second);
    }
}

fn log_dropped(d: Dropped, rate: u32, bytes_per_second: u64) {
    tracing::warn!(
        dropped_lines = d.lines,
        dropped_bytes = d.bytes,
        pid = std::process::id(),
        "wsgi.errors: {} lines ({}) dropped in the last {:.1} s from this worker (rate limit {} lines/s and {}/s per worker, bursts of twice that; raise --errors-rate)",
        grouped(d.lines),
        size(d.bytes),
        d.over.as_secs_f64().max(0.1),
        grouped(u64::from(rate)),
        size(bytes_per_second),
    );
}

/// `12345` → `12,345`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count as people read it: `512 B`, `3.2 KiB`, `1.0 MiB`, `2.5 GiB`.
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[pyclass(module = "postern", name = "Errors")]
pub struct Errors {
    /// The line so far, at most [`MAX_LINE`] bytes.
    line: String,
    /// Bytes of the line beyond [`MAX_LINE`], counted and not kept.
    cut: usize,
    /// Shared with the writes in flight: a line is forwarded after the object's borrow
    /// ends (see [`Errors::forward_pending`]).
    forward: Option<Arc<ErrorsForward>>,
    /// Lines (each with its newline) logged and not yet forwarded.
    pending: Vec<u8>,
}

impl Errors {
    pub fn new(forward: Option<ErrorsForward>) -> Self {
        Errors {
            line: String::new(),
            cut: 0,
            forward: forward.map(Arc::new),
            pending: Vec::new(),
        }
    }

    /// Adds text without a newline to the line, up to [`MAX_LINE`].
    fn append(&mut self, text: &str) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if text.len() <= room {
            self.line.push_str(text);
            return;
        }
        let mut keep = room;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        self.line.push_str(&text[..keep]);
        self.cut += text.len() - keep;
    }

    fn feed(&mut self, text: &str) {
        let mut rest = text;
        while let Some(i) = rest.find('\n') {
            self.append(&rest[..i]);
            self.end_line();
            rest = &rest[i + 1..];
        }
        self.append(rest);
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let cut = std::mem::take(&mut self.cut);
        self.emit(&line, cut);
        // The buffer is reused unless a long line grew it.
        if line.capacity() <= 1024 {
            self.line = line;
            self.line.clear();
        }
    }

    fn emit(&mut self, line: &str, cut: usize) {
        let line = line.trim_end_matches('\r');
        if !admit(line.len()) {
            return;
        }
        // A line may carry what a client sent (a path, a header): a lone CR, a
        // backspace or a NUL would let it overwrite or hide the log line on a terminal
        // (and in the front server's error log, where it is forwarded).
        let line = crate::logging::escape_unsafe(line, false);
        let line = line.as_ref();
        let note = if cut > 0 {
            format!(
                " [line truncated: {} more bytes not logged; wsgi.errors lines are capped at {} KiB]",
                grouped(cut as u64),
                MAX_LINE / 1024
            )
        } else {
            String::new()
        };
        tracing::warn!(target: "wsgi.errors", "{}{}", line, note);
        if self.forward.is_some() {
            self.pending.extend_from_slice(line.as_bytes());
            self.pending.extend_from_slice(note.as_bytes());
            self.pending.push(b'\n');
        }
    }

    /// Sends the lines logged so far to the front server. The front server may be slow
    /// to read: never wait with the GIL held, nor with the object borrowed (another
    /// thread holding the same `wsgi.errors` would get "Already borrowed").
    fn forward_pending(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (forward, bytes) = {
            let mut me = slf.try_borrow_mut()?;
            if me.pending.is_empty() {
                return Ok(());
            }
            (me.forward.clone(), std::mem::take(&mut me.pending))
        };
        if let Some(f) = forward {
            slf.py().detach(|| f(&bytes));
        }
        Ok(())
    }
}

impl Default for Errors {
    fn default() -> Self {
        Self::new(None)
    }
}

#[pymethods]
impl Errors {
    // The methods borrow the object only while the GIL is held throughout: threads
    // sharing one `wsgi.errors` (a kept reference, a global logging handler) never
    // meet a borrow.
    fn write(slf: &Bound<'_, Self>, text: &Bound<'_, PyString>) -> PyResult<usize> {
        // Any str is accepted (PEP 3333), lone surrogates included.
        let chars = text.len()?;
        if chars <= SLICE_CHARS {
            slf.try_borrow_mut()?.feed(&text.to_string_lossy());
            Self::forward_pending(slf)?;
            return Ok(chars);
        }
        for start in (0..chars).step_by(SLICE_CHARS) {
            let end = (start + SLICE_CHARS).min(chars);
            let part = text.get_item(PySlice::new(text.py(), start as isize, end as isize, 1))?;
            let part = part.cast::<PyString>()?;
            slf.try_borrow_mut()?.feed(&part.to_string_lossy());
            Self::forward_pending(slf)?;
        }
        Ok(chars)
    }

    fn writelines(slf: &Bound<'_, Self>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            let line = line?;
            Self::write(slf, line.cast::<PyString>()?)?;
        }
        Ok(())
    }

    #[pyo3(name = "flush")]
    fn py_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.try_borrow_mut()?.flush();
        Self::forward_pending(slf)
    }

    fn writable(&self) -> bool {
        true
    }

    fn isatty(&self) -> bool {
        false
    }
}

impl Errors {
    /// Ends the line so far, if any (the Rust side's flush: the caller forwards).
    pub fn flush(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.end_line();
        }
    }

    /// A forwarding object that nothing else refers to any more, ready for another
    /// request: as new, with `forward` (the caller reuses it instead of allocating).
    pub fn renew(&mut self, forward: ErrorsForward) {
        self.line.clear();
        self.cut = 0;
        self.pending.clear();
        self.forward = Some(Arc::new(forward));
    }

    /// What dropping the object does, for one its request no longer reaches (and the
    /// caller may [`Errors::renew`]): the line so far is ended and forwarded (the GIL
    /// released for the write), and the forward let go of.
    pub fn end(slf: &Bound<'_, Self>) {
        if let Ok(mut me) = slf.try_borrow_mut() {
            me.flush();
        }
        let _ = Self::forward_pending(slf);
        if let Ok(mut me) = slf.try_borrow_mut() {
            me.forward = None;
            me.pending.clear();
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        self.flush();
        if let (Some(f), false) = (&self.forward, self.pending.is_empty()) {
            let bytes = std::mem::take(&mut self.pending);
            Python::attach(|py| py.detach(|| f(&bytes)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 20, t0);
        assert_eq!((0..25).filter(|_| b.take(1, t0)).count(), 20);
        assert!(!b.take(1, t0));
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 20, t0);
        while b.take(1, t0) {}
        // 10 a second: 300 ms later, 3 tokens.
        assert_eq!((0..10).filter(|_| b.take(1, at(t0, 300))).count(), 3);
        // A long pause saves up no more than the burst.
        assert_eq!((0..100).filter(|_| b.take(1, at(t0, 60_000))).count(), 20);
    }

    #[test]
    fn a_cost_over_the_burst_passes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 200, t0);
        assert!(b.take(1000, t0));
        // 800 in debt: 8 s to be back at 0, 10 s to have 200 again.
        assert!(!b.take(1, at(t0, 7_900)));
        assert!(b.take(1, at(t0, 8_100)));
        assert!(!b.take(1000, at(t0, 9_000)));
        assert!(b.take(1000, at(t0, 11_000)));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::new(10, 10, t0);
        while b.take(1, t0) {}
        assert!(!b.take(1, t0 - Duration::from_secs(5)));
        assert!(!b.take(1, t0));
    }

    #[test]
    fn the_limiter_passes_a_burst_of_two_seconds_then_its_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1000, t0);
        // A flood of short lines at one instant: the burst passes.
        let passed = (0..10_000).filter(|_| l.admit(20, t0)).count();
        assert_eq!(passed, 2000);
        // Then 1,000 a second.
        let passed = (0..10_000).filter(|_| l.admit(20, at(t0, 1000))).count();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn the_limiter_counts_bytes_too() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1000, t0);
        // 1,000 lines/s and 512 KiB/s; bursts of 1 MiB: 128 lines of 8 KiB.
        let passed = (0..1000).filter(|_| l.admit(MAX_LINE, t0)).count();
        assert_eq!(passed, 128);
    }

    #[test]
    fn the_limiter_reports_drops_once_and_only_when_due() {
        let t0 = Instant::now();
        let mut l = Limiter::new(10, t0);
        assert_eq!(l.report(t0, false), None);
        for _ in 0..25 {
            l.admit(100, t0);
        }
        // 20 passed (the burst), 5 dropped: not due yet on the write path.
        assert_eq!(l.report(at(t0, 500), true), None);
        let d = l.report(at(t0, 1000), true).expect("due after a second");
        assert_eq!(
            d,
            Dropped {
                lines: 5,
                bytes: 500,
                over: Duration::from_secs(1)
            }
        );
        assert_eq!(l.report(at(t0, 5000), false), None);
    }

    #[test]
    fn the_reporter_takes_drops_before_they_are_due() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1, t0);
        for _ in 0..3 {
            l.admit(1, t0);
        }
        let d = l.report(at(t0, 200), false).expect("one dropped");
        assert_eq!((d.lines, d.bytes), (1, 1));
    }

    #[test]
    fn counts_read_as_people_write_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(12_345), "12,345");
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
    }

    #[test]
    fn control_bytes_are_escaped_and_the_rest_kept() {
        assert_eq!(
            crate::logging::escape_unsafe("a\rFORGED\0b\x08\x1b[0m\té\x7f\u{9b}\u{202e}", false),
            "a\\x0DFORGED\\x00b\\x08\\x1B[0m\té\\x7F\\x9B\\u{202E}"
        );
    }

    #[test]
    fn a_long_line_keeps_its_first_bytes_and_counts_the_rest() {
        let mut e = Errors::new(None);
        e.append(&"é".repeat(MAX_LINE)); // 2 bytes each
        assert_eq!(e.line.len(), MAX_LINE);
        assert_eq!(e.cut, MAX_LINE);
        e.append("x");
        assert_eq!((e.line.len(), e.cut), (MAX_LINE, MAX_LINE + 1));
        // A cut that falls inside a character keeps the character whole or not at all.
        let mut e = Errors::new(None);
        e.append(&"a".repeat(MAX_LINE - 1));
        e.append("é");
        assert_eq!((e.line.len(), e.cut), (MAX_LINE - 1, 2));
        // Nothing is logged here: the line is thrown away with the test.
        e.line.clear();
        e.cut = 0;
    }
}
