//! The log lines of clients dropped at `--head-timeout` (a request head that never
//! became whole: sent byte by byte, cut short, or nothing at all). One such client is
//! worth a line naming it; thousands (a slowloris attack, a broken health check) would
//! flood the log with lines that say nothing more. So, per process, the first
//! [`NAMED`] in a [`WINDOW`] are logged one by one, naming the peer, and the rest are
//! counted: one line at the end of the window says how many more there were and names
//! the last of them. The next drop after that starts a new window.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients named one by one per window.
pub const NAMED: u32 = 20;
/// How long one window lasts (from its first drop).
pub const WINDOW: Duration = Duration::from_secs(10);

struct State {
    /// The first drop of the window under way; `None`: none is.
    since: Option<Instant>,
    /// Clients named in this window.
    named: u32,
    /// Clients counted (not named) in this window, and the last of them.
    more: u64,
    last: String,
    /// `--head-timeout`, for the summary.
    limit: Duration,
    /// A task says the summary at the end of the window.
    summary_due: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    since: None,
    named: 0,
    more: 0,
    last: String::new(),
    limit: Duration::ZERO,
    summary_due: false,
});

/// A client `peer` is dropped at `--head-timeout` (`limit`): true when the caller
/// logs its line naming it, false when it is counted for the window's summary.
pub fn name(peer: &str, limit: Duration) -> bool {
    let now = Instant::now();
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if st.since.is_some_and(|t| now.duration_since(t) >= WINDOW) {
        // A window whose summary no task said (no runtime here): said now.
        summary(&mut st);
    }
    let since = *st.since.get_or_insert(now);
    if st.named < NAMED {
        st.named += 1;
        return true;
    }
    st.more += 1;
    st.last.clear();
    st.last.push_str(peer);
    st.limit = limit;
    if !st.summary_due {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            st.summary_due = true;
            rt.spawn(async move {
                tokio::time::sleep_until((since + WINDOW).into()).await;
                let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
                summary(&mut st);
            });
        }
    }
    false
}

/// Says the window's count of clients not named (if any) and ends the window.
fn summary(st: &mut State) {
    if st.more > 0 {
        tracing::warn!(
            last_peer = %st.last,
            "{} more clients dropped in the last {} s for no complete request head within {:?} (--head-timeout), not named one by one (the first {NAMED} of each {} s are): a flood of slow or incomplete requests, e.g. a slowloris attack, or a broken client or health check",
            st.more,
            WINDOW.as_secs(),
            st.limit,
            WINDOW.as_secs(),
        );
    }
    st.since = None;
    st.named = 0;
    st.more = 0;
    st.summary_due = false;
}
