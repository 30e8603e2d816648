//! Where a worker is in its life, as the master sees it, and what the master makes of
//! its exit. Both are plain data and pure functions so they can be tested without
//! forking (the master in `master.rs` applies the decisions).

use std::time::Instant;

use crate::stats::Cause;

/// A worker's phase. Transitions are the methods below; nothing else assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Forked and importing the app: it has not said "ready" yet.
    Booting,
    /// Said "ready"; serves as part of its generation.
    Serving,
    /// On its way out, for the cause: asked to drain (SIGTERM) by the master, or
    /// recycling itself. Its exit is expected.
    Stopping(Cause),
    /// A request passed `--timeout`: its stacks are being dumped (SIGUSR2); SIGKILL is
    /// due at `kill_at`.
    Condemned { kill_at: Instant },
    /// SIGKILLed after `--timeout`: its scoreboard lines are stale.
    Killed,
}

impl Phase {
    /// Not on its way out (booting or serving).
    pub fn active(self) -> bool {
        matches!(self, Phase::Booting | Phase::Serving)
    }

    /// Why it is leaving, if it is.
    pub fn leaving(self) -> Option<Cause> {
        match self {
            Phase::Booting | Phase::Serving => None,
            Phase::Stopping(cause) => Some(cause),
            Phase::Condemned { .. } | Phase::Killed => Some(Cause::Timeout),
        }
    }

    /// Had its SIGTERM (or sent itself one) and finishes its requests: a second
    /// SIGTERM would cut them off. A condemned worker is not draining: it is killed.
    pub fn draining(self) -> bool {
        matches!(self, Phase::Stopping(_) | Phase::Killed)
    }

    /// Its ready byte arrived. Only a booting worker starts serving: one already
    /// asked to leave stays on its way out.
    pub fn ready(&mut self) {
        if *self == Phase::Booting {
            *self = Phase::Serving;
        }
    }

    /// Asked to leave for `cause` (the first cause wins); returns the cause it leaves
    /// for.
    pub fn stop(&mut self, cause: Cause) -> Cause {
        if self.active() {
            *self = Phase::Stopping(cause);
        }
        self.leaving().unwrap_or(cause)
    }

    /// Over `--timeout`: killed at `kill_at`, whatever it was doing before.
    pub fn condemn(&mut self, kill_at: Instant) {
        *self = Phase::Condemned { kill_at };
    }

    /// The request that condemned it ended during the dump: it is not killed, and
    /// drains (its SIGTERM came with the dump), still leaving for the timeout.
    pub fn spare(&mut self) {
        if matches!(self, Phase::Condemned { .. }) {
            *self = Phase::Stopping(Cause::Timeout);
        }
    }

    /// The SIGKILL due at `kill_at` was sent.
    pub fn killed(&mut self) {
        if matches!(self, Phase::Condemned { .. }) {
            *self = Phase::Killed;
        }
    }
}

/// An exited worker, as far as [`judge_exit`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Departed {
    pub generation: u64,
    pub phase: Phase,
    /// What the scoreboard says it recycled itself for (`--max-requests`, `--max-rss`),
    /// in case it exited before the master noticed.
    pub self_retired: Option<Cause>,
    /// It never said ready and exited on its own, not cleanly (its import failed, it
    /// crashed): a failed start, even if it had been told to leave meanwhile.
    pub failed_start: bool,
    /// A failed start ended by a signal the master did not send (the OOM killer's
    /// SIGKILL, an operator's kill): not the app's code failing to import.
    pub killed_in_import: bool,
    /// It was started in place of a reload's worker killed during its import.
    pub retry: bool,
    /// It exited with status 0.
    pub clean_exit: bool,
    /// The master killed it at `--worker-start-timeout` while no worker served: a
    /// dependency that hangs (a database down), never a reason to stop ([`CRASH_LOOP`]).
    pub timed_out_alone: bool,
    /// On its way out (draining), it ended by a signal the master did not send (the
    /// OOM killer, an operator's `kill -9`) or a fatal exit code (2 and up): a crash,
    /// not the leave it was asked for.
    pub died_leaving: bool,
}

/// The master's state when a worker exits.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// The serving generation (the newest one).
    pub generation: u64,
    /// "All workers ready" was said once: the first generation did start.
    pub announced: bool,
    /// Workers of the serving generation that died before they were ready, in a row.
    pub boot_failures: u32,
    /// A worker of an older generation is still active (a reload is under way).
    pub previous_serves: bool,
    /// Another worker serves: the app did start, and users are still answered.
    pub others_serve: bool,
    /// The reload's new workers killed by a signal during their import so far.
    pub import_kills: u32,
}

/// What the master does about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It was asked to leave, or recycled itself: logged, nothing else.
    Expected,
    /// It died on its own: logged as an error and replaced.
    Replace,
    /// A worker of a generation that was already superseded failed to boot: nothing to
    /// replace.
    Superseded,
    /// A serving worker of a generation a reload is replacing died on its own: logged
    /// as an error, not replaced (the reload's new workers take its place).
    Outgoing,
    /// A reload's new worker was killed by a signal during its import (the OOM killer,
    /// say), the previous code still serving: not the code failing, so another starts
    /// in its place and the reload goes on.
    Restart,
    /// A reload whose new workers do not start while the previous code still serves:
    /// go back to the previous generation and drain the new one.
    Rollback,
    /// The first workers do not start: stop everything.
    BootFailed,
    /// Workers keep dying before they are ready and none serves: stop.
    CrashLoop,
}

/// [`judge_exit`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Counted under this cause (`postern_worker_exits_total`).
    pub cause: Cause,
    /// The cause its replacement starts with, if one is to start for it.
    pub pending: Option<Cause>,
    /// The new count of boot failures in a row.
    pub boot_failures: u32,
    pub verdict: Verdict,
}

/// Workers dying before ready this many times in a row stop the master.
pub const CRASH_LOOP: u32 = 10;

/// A reload's new workers killed by a signal during their import this many times fail
/// the reload (as does the kill of a worker started in place of a killed one).
pub const IMPORT_KILLS: u32 = 3;

/// When a replacement may start after `boot_failures` failed boots in a row, the last
/// of which exited at `failed_exit`: 200 ms after the first, doubling up to 12.8 s.
pub fn respawn_at(boot_failures: u32, failed_exit: Instant) -> Instant {
    failed_exit + std::time::Duration::from_millis(100u64 << boot_failures.clamp(1, 7))
}

/// Decides what a worker's exit means: expected, a crash to replace, a failed reload
/// to roll back, or a reason to stop.
pub fn judge_exit(w: Departed, fleet: Fleet) -> Judgement {
    let mut boot_failures = fleet.boot_failures;
    if let Some(cause) = w.phase.leaving() {
        // A failed start told to leave before it failed (the twin of a reload's worker
        // whose failure rolled the reload back) still counts as one; nothing replaces
        // it, and the count in a row is the serving generation's, so left as it is.
        // regression: it counted (and was logged at INFO) as an ordinary reload exit.
        // regression (probe 373): a draining worker killed by the OOM killer counted as
        // the reload's exit, not a crash.
        let cause = if w.failed_start {
            Cause::BootFailure
        } else if w.died_leaving {
            Cause::Crash
        } else {
            cause
        };
        return Judgement {
            cause,
            pending: None,
            boot_failures,
            verdict: Verdict::Expected,
        };
    }
    if let Some(cause) = w.self_retired {
        // It recycled itself and exited before the master saw it: its replacement
        // starts now, for the same cause. Killed meanwhile: a crash all the same.
        return Judgement {
            cause: if w.died_leaving { Cause::Crash } else { cause },
            pending: Some(cause),
            boot_failures,
            verdict: Verdict::Expected,
        };
    }
    let judgement = |cause, boot_failures, verdict| Judgement {
        cause,
        pending: Some(cause),
        boot_failures,
        verdict,
    };
    if w.phase == Phase::Serving {
        if w.generation < fleet.generation {
            // regression: logged "replacing it", and nothing replaced it (nor should).
            return Judgement {
                cause: Cause::Crash,
                pending: None,
                boot_failures,
                verdict: Verdict::Outgoing,
            };
        }
        // A clean exit nobody asked for is a stop signal sent to the worker directly.
        // regression (probe): its replacement started with cause="crash".
        let cause = if w.clean_exit {
            Cause::Signal
        } else {
            Cause::Crash
        };
        return judgement(cause, boot_failures, Verdict::Replace);
    }
    if w.generation < fleet.generation && (w.generation > 0 || fleet.announced) {
        // Its failures are its generation's, which nothing starts again: they neither
        // hold the serving workers as "starts-failed" nor delay the new generation's
        // starts with their backoff.
        // regression: they counted as the serving generation's failures in a row.
        return Judgement {
            cause: Cause::BootFailure,
            pending: None,
            boot_failures,
            verdict: Verdict::Superseded,
        };
    }
    let reloading = fleet.generation > 0 && fleet.previous_serves;
    if reloading
        && w.killed_in_import
        && !w.retry
        && fleet.import_kills + 1 < IMPORT_KILLS
        && w.generation == fleet.generation
    {
        // regression: the reload failed ("the new workers do not start"), its healthy
        // workers drained with it, for one worker the OOM killer took.
        return Judgement {
            cause: Cause::BootFailure,
            pending: Some(Cause::Reload),
            boot_failures,
            verdict: Verdict::Restart,
        };
    }
    boot_failures += 1;
    let verdict = if w.generation == 0 && !fleet.announced {
        Verdict::BootFailed
    } else if reloading {
        Verdict::Rollback
    } else if boot_failures >= CRASH_LOOP && !fleet.others_serve && !w.timed_out_alone {
        // While others serve, a replacement that cannot start (broken code on disk
        // after a failed reload) is retried with the capped backoff, never a reason to
        // stop the workers that serve.
        // regression: the 10th failure stopped everything, healthy workers included.
        Verdict::CrashLoop
    } else {
        Verdict::Replace
    };
    judgement(Cause::BootFailure, boot_failures, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_respawn_backoff_doubles_from_the_failed_exit_up_to_a_cap() {
        let t = Instant::now();
        let after = |n| respawn_at(n, t) - t;
        assert_eq!(after(1), Duration::from_millis(200));
        assert_eq!(after(2), Duration::from_millis(400));
        assert_eq!(after(6), Duration::from_millis(6400));
        assert_eq!(after(7), Duration::from_millis(12800));
        assert_eq!(after(CRASH_LOOP), Duration::from_millis(12800));
    }

    fn fleet(generation: u64) -> Fleet {
        Fleet {
            generation,
            announced: true,
            boot_failures: 0,
            previous_serves: false,
            others_serve: false,
            import_kills: 0,
        }
    }

    fn departed(generation: u64, phase: Phase) -> Departed {
        Departed {
            generation,
            phase,
            self_retired: None,
            failed_start: false,
            killed_in_import: false,
            retry: false,
            clean_exit: false,
            timed_out_alone: false,
            died_leaving: false,
        }
    }

    // regression (review 333): imports killed at --worker-start-timeout while none
    // served (a database down) reached the crash loop's count: the master stopped.
    #[test]
    fn imports_killed_at_the_start_timeout_while_none_serves_never_stop_the_master() {
        let mut f = fleet(0);
        f.announced = true;
        f.others_serve = false;
        f.boot_failures = CRASH_LOOP + 3;
        let j = judge_exit(
            Departed {
                timed_out_alone: true,
                ..departed(0, Phase::Booting)
            },
            f,
        );
        assert_eq!(j.verdict, Verdict::Replace);
        assert_eq!(j.boot_failures, CRASH_LOOP + 4, "still backed off");
    }

    #[test]
    fn a_worker_asked_to_leave_is_expected_and_not_replaced_for_it() {
        for (phase, cause) in [
            (Phase::Stopping(Cause::Reload), Cause::Reload),
            (Phase::Stopping(Cause::Scale), Cause::Scale),
            (Phase::Killed, Cause::Timeout),
            (
                Phase::Condemned {
                    kill_at: Instant::now(),
                },
                Cause::Timeout,
            ),
        ] {
            let j = judge_exit(departed(1, phase), fleet(1));
            assert_eq!(j.verdict, Verdict::Expected, "{phase:?}");
            assert_eq!(j.cause, cause);
            assert_eq!(j.pending, None);
            assert_eq!(j.boot_failures, 0);
        }
    }

    // regression: after a failed reload (both new workers fail to import), the second
    // one, told to leave by the rollback the first one's exit caused, counted as a
    // `reload` exit instead of a `boot-failure`.
    #[test]
    fn a_failed_start_told_to_leave_meanwhile_counts_as_a_boot_failure() {
        let w = Departed {
            failed_start: true,
            ..departed(2, Phase::Stopping(Cause::Reload))
        };
        let j = judge_exit(w, fleet(1));
        assert_eq!(j.cause, Cause::BootFailure);
        assert_eq!(j.verdict, Verdict::Expected);
        assert_eq!(j.pending, None);
        assert_eq!(j.boot_failures, 0);
    }

    #[test]
    fn a_draining_worker_that_dies_counts_as_a_crash_and_is_not_replaced_for_it() {
        for cause in [Cause::Reload, Cause::MaxRequests, Cause::Stop] {
            let w = Departed {
                died_leaving: true,
                ..departed(1, Phase::Stopping(cause))
            };
            let j = judge_exit(w, fleet(2));
            assert_eq!(j.cause, Cause::Crash, "{cause:?}");
            assert_eq!(j.verdict, Verdict::Expected, "{cause:?}");
            assert_eq!(
                j.pending, None,
                "{cause:?}: its successor was started already"
            );
        }
        // Recycling itself, not seen yet: its replacement starts for the recycling.
        let w = Departed {
            died_leaving: true,
            self_retired: Some(Cause::MaxRequests),
            ..departed(0, Phase::Serving)
        };
        let j = judge_exit(w, fleet(0));
        assert_eq!(j.cause, Cause::Crash);
        assert_eq!(j.pending, Some(Cause::MaxRequests));
    }

    #[test]
    fn a_serving_worker_that_exits_cleanly_unasked_is_replaced_for_a_signal_not_a_crash() {
        let crashed = judge_exit(departed(0, Phase::Serving), fleet(0));
        assert_eq!(crashed.verdict, Verdict::Replace);
        assert_eq!(crashed.pending, Some(Cause::Crash));
        let w = Departed {
            clean_exit: true,
            ..departed(0, Phase::Serving)
        };
        let j = judge_exit(w, fleet(0));
        assert_eq!(j.verdict, Verdict::Replace);
        assert_eq!((j.cause, j.pending), (Cause::Signal, Some(Cause::Signal)));
    }

    #[test]
    fn a_worker_that_recycled_itself_unseen_is_replaced_for_its_cause() {
        let w = Departed {
            self_retired: Some(Cause::MaxRequests),
            ..departed(0, Phase::Serving)
        };
        let j = judge_exit(w, fleet(0));
        assert_eq!(j.verdict, Verdict::Expected);
        assert_eq!(j.cause, Cause::MaxRequests);
        assert_eq!(j.pending, Some(Cause::MaxRequests));
    }

    #[test]
    fn a_serving_worker_that_dies_is_a_crash_and_is_replaced() {
        let j = judge_exit(
            departed(2, Phase::Serving),
            Fleet {
                boot_failures: 3,
                ..fleet(2)
            },
        );
        assert_eq!(j.verdict, Verdict::Replace);
        assert_eq!(j.cause, Cause::Crash);
        assert_eq!(j.pending, Some(Cause::Crash));
        assert_eq!(
            j.boot_failures, 3,
            "a crash after ready is not a boot failure"
        );
    }

    #[test]
    fn the_first_workers_failing_to_boot_stop_the_master() {
        let j = judge_exit(
            departed(0, Phase::Booting),
            Fleet {
                announced: false,
                ..fleet(0)
            },
        );
        assert_eq!(j.verdict, Verdict::BootFailed);
        assert_eq!(j.cause, Cause::BootFailure);
        assert_eq!(j.boot_failures, 1);
    }

    #[test]
    fn a_reload_whose_workers_do_not_boot_rolls_back_while_the_old_code_serves() {
        let j = judge_exit(
            departed(1, Phase::Booting),
            Fleet {
                previous_serves: true,
                ..fleet(1)
            },
        );
        assert_eq!(j.verdict, Verdict::Rollback);
        assert_eq!(j.cause, Cause::BootFailure);
    }

    #[test]
    fn a_failed_boot_after_the_old_code_left_is_retried_not_rolled_back() {
        // A chain reload that already drained every old worker has nothing to go back to.
        let j = judge_exit(departed(1, Phase::Booting), fleet(1));
        assert_eq!(j.verdict, Verdict::Replace);
        assert_eq!(j.pending, Some(Cause::BootFailure));
        assert_eq!(j.boot_failures, 1);
    }

    #[test]
    fn a_superseded_generation_failing_to_boot_changes_nothing() {
        // Reload during a reload: the generation still booting was dropped.
        let j = judge_exit(
            departed(1, Phase::Booting),
            Fleet {
                previous_serves: true,
                ..fleet(2)
            },
        );
        assert_eq!(j.verdict, Verdict::Superseded);
        assert_eq!(j.pending, None);
        // regression: 1, the serving generation's count in a row.
        assert_eq!(j.boot_failures, 0);
    }

    #[test]
    fn a_serving_worker_of_a_generation_being_replaced_is_not_replaced() {
        let j = judge_exit(
            departed(0, Phase::Serving),
            Fleet {
                previous_serves: true,
                ..fleet(1)
            },
        );
        assert_eq!(j.verdict, Verdict::Outgoing);
        assert_eq!(j.cause, Cause::Crash);
        assert_eq!(j.pending, None);
    }

    #[test]
    fn a_reload_worker_killed_in_its_import_is_restarted_a_bounded_number_of_times() {
        let reload = Fleet {
            previous_serves: true,
            ..fleet(1)
        };
        let killed = Departed {
            failed_start: true,
            killed_in_import: true,
            ..departed(1, Phase::Booting)
        };
        let j = judge_exit(killed, reload);
        assert_eq!(j.verdict, Verdict::Restart);
        assert_eq!(j.pending, Some(Cause::Reload));
        assert_eq!(j.boot_failures, 0, "not the code failing");
        // The one started in its place killed too: the reload fails.
        let again = Departed {
            retry: true,
            ..killed
        };
        assert_eq!(judge_exit(again, reload).verdict, Verdict::Rollback);
        // As does the IMPORT_KILLS-th kill in a reload.
        let many = Fleet {
            import_kills: IMPORT_KILLS - 1,
            ..reload
        };
        assert_eq!(judge_exit(killed, many).verdict, Verdict::Rollback);
        // An import that fails (an exit, not a signal) fails the reload as before.
        let failed = Departed {
            killed_in_import: false,
            ..killed
        };
        assert_eq!(judge_exit(failed, reload).verdict, Verdict::Rollback);
    }

    #[test]
    fn ten_boot_failures_in_a_row_are_a_crash_loop() {
        let mut f = fleet(0);
        for n in 1..CRASH_LOOP {
            let j = judge_exit(departed(0, Phase::Booting), f);
            assert_eq!(j.verdict, Verdict::Replace, "failure {n}");
            f.boot_failures = j.boot_failures;
        }
        let j = judge_exit(departed(0, Phase::Booting), f);
        assert_eq!(j.verdict, Verdict::CrashLoop);
        assert_eq!(j.boot_failures, CRASH_LOOP);
    }

    #[test]
    fn replacements_failing_to_boot_while_others_serve_are_retried_for_ever() {
        let mut f = Fleet {
            others_serve: true,
            ..fleet(1)
        };
        for n in 1..3 * CRASH_LOOP {
            let j = judge_exit(departed(1, Phase::Booting), f);
            assert_eq!(j.verdict, Verdict::Replace, "failure {n}");
            assert_eq!(j.pending, Some(Cause::BootFailure));
            f.boot_failures = j.boot_failures;
        }
    }

    #[test]
    fn a_stopping_worker_stays_stopping_when_its_ready_byte_arrives() {
        let mut p = Phase::Stopping(Cause::Reload);
        p.ready();
        assert_eq!(p, Phase::Stopping(Cause::Reload));
        let mut p = Phase::Booting;
        p.ready();
        assert_eq!(p, Phase::Serving);
    }

    #[test]
    fn the_first_cause_to_stop_a_worker_wins() {
        let mut p = Phase::Serving;
        assert_eq!(p.stop(Cause::Reload), Cause::Reload);
        assert_eq!(p.stop(Cause::Stop), Cause::Reload);
        let mut p = Phase::Condemned {
            kill_at: Instant::now() + Duration::from_millis(500),
        };
        assert_eq!(p.stop(Cause::Stop), Cause::Timeout);
        assert!(!p.draining(), "a condemned worker is signalled at a stop");
        p.killed();
        assert_eq!(p, Phase::Killed);
        assert!(p.draining());
    }

    #[test]
    fn a_condemned_worker_spared_drains_for_the_timeout() {
        let mut p = Phase::Condemned {
            kill_at: Instant::now(),
        };
        p.spare();
        assert_eq!(p, Phase::Stopping(Cause::Timeout));
        assert!(p.draining());
        assert_eq!(p.leaving(), Some(Cause::Timeout));
        // Only a condemned worker is spared.
        let mut p = Phase::Serving;
        p.spare();
        assert_eq!(p, Phase::Serving);
    }
}
