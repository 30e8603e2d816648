//! `/metrics`: a [`Snapshot`] in the Prometheus text format (0.0.4), encoded by
//! prometheus-client. The values live in the shared scoreboard, not in
//! prometheus-client's own metric types, so each scrape encodes a snapshot through a
//! [`Collector`] with constant metrics. Names follow Prometheus conventions: the
//! `postern_` prefix, base units in the name (`_seconds`, `_bytes`), `_total` on
//! counters.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{
    Cause, Hold, Snapshot, Worker, WorkerState, DURATION_BUCKETS, PROTOCOLS, STATUS_CLASSES,
};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The snapshot as Prometheus text.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("postern");
    registry.register_collector(Box::new(Metrics(Arc::new(snapshot.clone()))));
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

#[derive(Debug)]
struct Metrics(Arc<Snapshot>);

type Labels = Vec<(&'static str, String)>;

/// One metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let samples: Vec<(Labels, M)> = samples.into_iter().collect();
    let Some((_, first)) = samples.first() else {
        // Nothing to report (no listener the kernel describes, no worker yet).
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit, first.metric_type())?;
    match samples.as_slice() {
        [(labels, metric)] if labels.is_empty() => metric.encode(m),
        _ => {
            for (labels, metric) in &samples {
                metric.encode(m.encode_family(labels)?)?;
            }
            Ok(())
        }
    }
}

/// The status classes of `postern_requests_refused_total`: postern answers 4xx or
/// 5xx itself, or closes unanswered.
const REFUSED_CLASSES: [&str; 3] = ["none", "4xx", "5xx"];

/// One counter per protocol and status class (of `classes`).
fn by_protocol_and_class(
    counts: &[[u64; STATUS_CLASSES.len()]; PROTOCOLS.len()],
    classes: &[&str],
) -> Vec<(Labels, ConstCounter<u64>)> {
    PROTOCOLS
        .iter()
        .zip(counts)
        .flat_map(|(p, row)| {
            let shown = STATUS_CLASSES.iter().zip(row);
            shown
                .filter(|(c, _)| classes.contains(c))
                .map(|(class, n)| {
                    (
                        vec![
                            ("protocol", p.name().to_owned()),
                            ("status", class.to_string()),
                        ],
                        counter(*n),
                    )
                })
        })
        .collect()
}

/// The label of a per-worker series.
fn worker(w: &Worker) -> Labels {
    vec![("worker", w.slot.to_string())]
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: usize) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A histogram from counts already bucketed (not cumulative).
struct Histogram<'a> {
    buckets: &'a [u64],
    sum: f64,
}

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let count = self.buckets.iter().sum();
        let bounds: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().copied())
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum, count, &bounds, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.0;
        let t = &s.totals;
        let none = Labels::new;

        family(
            &mut enc,
            "requests",
            "Requests the Python threads (or an ASGI event loop) ran, by protocol and status class (none: ended before a status was chosen); one cut off by a stop or a --timeout kill counts as its front server saw it (502 when no response had started), one its worker's crash cut off as none.",
            None,
            by_protocol_and_class(&t.requests, &STATUS_CLASSES),
        )?;
        family(
            &mut enc,
            "requests_refused",
            "Requests postern answered itself before any Python thread ran them (a malformed head: 400, 431; a body announced by Transfer-Encoding without CONTENT_LENGTH: 411; a body over --max-body: 413; a body that could not be spooled to disk: 503), or closed without an answer (none); not in postern_requests_total.",
            None,
            // Only the classes postern's own answers have (no zero series for 2xx).
            by_protocol_and_class(&t.refused, &REFUSED_CLASSES),
        )?;
        family(
            &mut enc,
            "request_duration",
            "Time from accepting a request (or reading its first byte) to the end of its response.",
            Some(&Unit::Seconds),
            [(
                none(),
                Histogram {
                    buckets: &t.duration,
                    sum: t.duration_ns as f64 / 1e9,
                },
            )],
        )?;
        family(
            &mut enc,
            "response",
            "Response bytes sent to the front server (head and body).",
            Some(&Unit::Bytes),
            [(none(), counter(t.bytes))],
        )?;
        family(
            &mut enc,
            "requests_in_flight",
            "Requests being run by Python threads now (draining workers included).",
            None,
            [(none(), gauge(s.in_flight()))],
        )?;
        let (busy, idle) = s.threads();
        family(
            &mut enc,
            "python_threads",
            "Python threads of the serving workers, busy with a request or idle.",
            None,
            [
                (vec![("state", "busy".to_owned())], gauge(busy)),
                (vec![("state", "idle".to_owned())], gauge(idle)),
            ],
        )?;
        family(
            &mut enc,
            "all_threads_busy",
            "Times a request took the last idle Python thread of the serving workers; the next connections wait in the listen queue (PHP-FPM's max children reached).",
            None,
            [(none(), counter(s.events.saturated))],
        )?;
        // One gauge per listener the kernel describes.
        let per_listener = |value: fn(&super::Listener) -> Option<u32>| {
            s.listeners.iter().filter_map(move |l| {
                value(l).map(|v| {
                    (
                        vec![
                            ("listener", l.addr.clone()),
                            ("protocol", l.protocol.name().to_owned()),
                        ],
                        ConstGauge::new(i64::from(v)),
                    )
                })
            })
        };
        family(
            &mut enc,
            "listen_queue_length",
            "Connections waiting in a listener's accept queue.",
            None,
            per_listener(|l| l.queued),
        )?;
        family(
            &mut enc,
            "listen_backlog",
            "The most connections a listener's accept queue holds (--listen-backlog, capped by net.core.somaxconn).",
            None,
            per_listener(|l| l.backlog),
        )?;
        let by_cause = |counts: &[u64], keep: fn(Cause) -> bool| {
            Cause::ALL
                .iter()
                .filter(move |c| keep(**c))
                .map(|c| {
                    (
                        vec![("cause", c.label().to_owned())],
                        counter(counts[c.index()]),
                    )
                })
                .collect::<Vec<_>>()
        };
        family(
            &mut enc,
            "worker_starts",
            "Workers started, by cause (a replacement has the cause of the exit it replaces).",
            None,
            by_cause(&s.events.starts, Cause::starts),
        )?;
        family(
            &mut enc,
            "worker_exits",
            "Workers that exited, by cause (killed: told to leave, still running past --graceful-timeout, killed by the master).",
            None,
            by_cause(&s.events.exits, Cause::exits),
        )?;
        if s.master {
            family(
                &mut enc,
                "reloads",
                "Reloads (SIGHUP, --touch-reload) that ended, by result: ok (the new workers serve) or failed (they did not start; the previous code serves on). A reload replaced by the next one before it ended counts once, with that one.",
                None,
                [
                    (vec![("result", "ok".to_owned())], counter(s.events.reloads[0])),
                    (
                        vec![("result", "failed".to_owned())],
                        counter(s.events.reloads[1]),
                    ),
                ],
            )?;
            family(
                &mut enc,
                "generation",
                "The generation of the workers that serve: 0 from the start, then the number of the last reload that succeeded (each reload takes the next number, so a failed one leaves a gap).",
                None,
                [(
                    none(),
                    ConstGauge::new(i64::try_from(s.events.generation).unwrap_or(i64::MAX)),
                )],
            )?;
        }
        family(
            &mut enc,
            "request_timeouts",
            "Requests that ran past --timeout (their worker was killed and replaced).",
            None,
            [(none(), counter(s.events.timeouts))],
        )?;
        family(
            &mut enc,
            "slow_requests",
            "Requests that ran past --slow-log (their worker's Python stacks were logged).",
            None,
            [(none(), counter(s.events.slow))],
        )?;
        family(
            &mut enc,
            "app_errors",
            "Requests the app failed: it raised (exception), broke the WSGI contract (wsgi_contract) or the ASGI one (asgi_contract: a message out of turn, or it returned before its response was complete).",
            None,
            super::APP_ERROR_KINDS
                .iter()
                .zip(t.app_errors)
                .map(|(kind, n)| (vec![("kind", (*kind).to_owned())], counter(n))),
        )?;
        family(
            &mut enc,
            "responses_cut",
            "Responses cut short: aborted (the app failed after the headers, or a short Content-Length; or its request was cut off by a stop, a --timeout kill or its worker's crash, unless postern answered it then: a 504 or 503) or client_gone (the front server went away, or read nothing of it for --read-timeout and postern closed).",
            None,
            [
                (vec![("reason", "aborted".to_owned())], counter(t.cut[0])),
                (vec![("reason", "client_gone".to_owned())], counter(t.cut[1])),
            ],
        )?;
        let states = [
            WorkerState::Starting,
            WorkerState::Serving,
            WorkerState::Retiring,
            WorkerState::Draining,
        ];
        family(
            &mut enc,
            "workers",
            "Worker processes, by state.",
            None,
            states.iter().map(|st| {
                let n = s.workers.iter().filter(|w| w.state == *st).count();
                (vec![("state", st.label().to_owned())], gauge(n))
            }),
        )?;
        family(
            &mut enc,
            "workers_unresponsive",
            "Workers that should serve (counted serving or retiring in postern_workers) whose heartbeat is over 10 s old: stopped (SIGSTOP, a debugger), frozen (swapping, stuck in the kernel) or with their I/O thread blocked. /status marks them \"unresponsive\": true (their state stays), with last_seen_seconds.",
            None,
            [(
                Vec::new(),
                gauge(s.workers.iter().filter(|w| w.unresponsive()).count()),
            )],
        )?;
        if s.master {
            // Both reasons always, at 0 when none is held: an alert on
            // `postern_workers_held{reason="starts-failed"} > 0` needs the series.
            family(
                &mut enc,
                "workers_held",
                "Workers the master holds past their recycling limits (--max-requests, --max-rss below its hard limit, --max-lifetime), by reason: starts-failed (the workers started to replace them fail to start: code broken on disk, an import past --worker-start-timeout) or reload (a reload's new workers are still starting). Each serves on until a successor is ready.",
                None,
                [Hold::StartsFailed, Hold::Reload].map(|h| {
                    let n = s.workers.iter().filter(|w| w.held == Some(h)).count();
                    (vec![("reason", h.label().to_owned())], gauge(n))
                }),
            )?;
        }
        family(
            &mut enc,
            "worker_requests",
            "Requests served by each running worker (worker: its slot, which a replacement reuses; /status maps it to a pid).",
            None,
            s.workers
                .iter()
                .map(|w| (worker(w), counter(w.requests))),
        )?;
        family(
            &mut enc,
            "worker_rss",
            "Resident memory of each running worker (worker: as in postern_worker_requests_total).",
            Some(&Unit::Bytes),
            s.workers.iter().filter_map(|w| {
                w.rss_bytes.map(|b| {
                    (
                        worker(w),
                        ConstGauge::new(i64::try_from(b).unwrap_or(i64::MAX)),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "log_lines_dropped",
            "Log lines not written: the log writer could not keep up (its queue was full), or the log file could not be written (a full disk, an I/O error).",
            None,
            [(none(), counter(s.log_lines_dropped))],
        )?;
        family(
            &mut enc,
            "start_time",
            "When the master (or the single process) started, as a Unix time.",
            Some(&Unit::Seconds),
            [(none(), ConstGauge::new(s.started_unix))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encodes_prometheus_text() {
        let text = encode(&crate::stats::tests::sample());
        for line in [
            "# TYPE postern_requests_total counter",
            r#"postern_requests_total{protocol="uwsgi",status="2xx"} 7"#,
            r#"postern_requests_total{protocol="uwsgi",status="4xx"} 2"#,
            r#"postern_requests_total{protocol="fastcgi",status="5xx"} 1"#,
            r#"postern_requests_total{protocol="scgi",status="none"} 0"#,
            r#"postern_requests_total{protocol="scgi",status="other"} 0"#,
            "# TYPE postern_requests_refused_total counter",
            r#"postern_requests_refused_total{protocol="uwsgi",status="4xx"} 3"#,
            r#"postern_requests_refused_total{protocol="fastcgi",status="none"} 0"#,
            r#"postern_requests_refused_total{protocol="scgi",status="5xx"} 0"#,
            "# TYPE postern_request_duration_seconds histogram",
            r#"postern_request_duration_seconds_bucket{le="0.001"} 8"#,
            r#"postern_request_duration_seconds_bucket{le="0.5"} 8"#,
            r#"postern_request_duration_seconds_bucket{le="1"} 10"#,
            r#"postern_request_duration_seconds_bucket{le="+Inf"} 10"#,
            "postern_request_duration_seconds_sum 1.5",
            "postern_request_duration_seconds_count 10",
            "postern_response_bytes_total 4096",
            "postern_requests_in_flight 1",
            r#"postern_python_threads{state="busy"} 1"#,
            r#"postern_python_threads{state="idle"} 1"#,
            "postern_all_threads_busy_total 3",
            r#"postern_listen_queue_length{listener="unix:/run/postern.sock",protocol="uwsgi"} 0"#,
            r#"postern_listen_backlog{listener="unix:/run/postern.sock",protocol="uwsgi"} 128"#,
            r#"postern_worker_starts_total{cause="boot"} 2"#,
            r#"postern_worker_starts_total{cause="crash"} 1"#,
            r#"postern_worker_exits_total{cause="crash"} 1"#,
            r#"postern_worker_exits_total{cause="max-rss"} 0"#,
            r#"postern_reloads_total{result="ok"} 2"#,
            r#"postern_reloads_total{result="failed"} 1"#,
            "# TYPE postern_generation gauge",
            "postern_generation 3",
            "postern_request_timeouts_total 0",
            "postern_slow_requests_total 0",
            r#"postern_app_errors_total{kind="exception"} 1"#,
            r#"postern_responses_cut_total{reason="client_gone"} 0"#,
            r#"postern_workers{state="serving"} 1"#,
            r#"postern_workers{state="starting"} 1"#,
            "# TYPE postern_workers_held gauge",
            r#"postern_workers_held{reason="starts-failed"} 0"#,
            r#"postern_workers_held{reason="reload"} 0"#,
            r#"postern_worker_requests_total{worker="0"} 6"#,
            r#"postern_worker_requests_total{worker="1"} 0"#,
            r#"postern_worker_rss_bytes{worker="0"} 20971520"#,
            "postern_log_lines_dropped_total 0",
            "postern_start_time_seconds 1700000000.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Exits never say "boot", starts never say "stop".
        assert!(!text.contains(r#"worker_exits_total{cause="boot"}"#));
        // Refusals are postern's own answers: no 1xx, 2xx, 3xx or other series.
        for class in ["1xx", "2xx", "3xx", "other"] {
            let series = format!(r#"requests_refused_total{{protocol="uwsgi",status="{class}"}}"#);
            assert!(!text.contains(&series), "{series}");
        }
        assert!(!text.contains(r#"worker_starts_total{cause="stop"}"#));
        // The starting worker has no RSS yet: no sample rather than a zero.
        assert!(!text.contains(r#"worker_rss_bytes{worker="1"}"#));
        // regression: per-worker series were labelled by pid, a new series for every
        // recycled worker (unbounded cardinality under --max-requests).
        assert!(!text.contains("pid="), "{text}");
        // regression: a response postern cut off for --read-timeout (`End::Stalled`)
        // is counted as client_gone, whose help said only 'the front server went away'.
        assert!(
            text.lines()
                .any(|l| l.starts_with("# HELP postern_responses_cut_total")
                    && l.contains("for --read-timeout and postern closed")),
            "{text}"
        );
    }

    // regression: a worker held past its recycling limits (its successors failing to
    // start) was in /status only: nothing for an alert to watch.
    #[test]
    fn held_workers_are_counted_by_reason() {
        let mut s = crate::stats::tests::sample();
        s.workers[0].held = Some(Hold::StartsFailed);
        s.workers[1].held = Some(Hold::StartsFailed);
        let text = encode(&s);
        for line in [
            r#"postern_workers_held{reason="starts-failed"} 2"#,
            r#"postern_workers_held{reason="reload"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // A single process holds nothing: no series.
        s.master = false;
        assert!(!encode(&s).contains("workers_held"));
    }

    // regression: a worker waiting for its successor counted as `serving`.
    #[test]
    fn a_retiring_worker_is_its_own_state_and_still_counts_its_threads() {
        let mut s = crate::stats::tests::sample();
        s.workers[0].state = WorkerState::Retiring;
        s.workers[0].leaving = Some(Cause::MaxRequests);
        let text = encode(&s);
        for line in [
            r#"postern_workers{state="serving"} 0"#,
            r#"postern_workers{state="retiring"} 1"#,
            r#"postern_python_threads{state="busy"} 1"#,
            r#"postern_python_threads{state="idle"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(s.answers());
        let json = crate::stats::status::json(&s);
        assert!(json.contains(r#""state": "retiring""#), "{json}");
        assert!(json.contains(r#""leaving_for": "max-requests""#), "{json}");
    }

    // regression: a SIGSTOPped (or frozen) worker showed as serving, nothing telling
    // it from one that serves: its heartbeat's age and `unresponsive` now do.
    #[test]
    fn a_worker_whose_heartbeat_is_stale_is_unresponsive() {
        let mut s = crate::stats::tests::sample();
        let text = encode(&s);
        assert!(
            text.lines().any(|l| l == "postern_workers_unresponsive 0"),
            "{text}"
        );
        let json = crate::stats::status::json(&s);
        assert!(json.contains(r#""last_seen_seconds": 0.1"#), "{json}");
        s.workers[0].last_seen = Some(crate::stats::UNRESPONSIVE_AFTER + Duration::from_secs(2));
        // A draining worker stops beating: not unresponsive for that.
        s.workers[1].state = WorkerState::Draining;
        s.workers[1].last_seen = Some(Duration::from_secs(60));
        let text = encode(&s);
        for line in [
            "postern_workers_unresponsive 1",
            r#"postern_workers{state="serving"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let json = crate::stats::status::json(&s);
        assert!(
            json.contains(
                r#""state": "serving",
      "unresponsive": true,
      "last_seen_seconds": 12.0,"#
            ),
            "{json}"
        );
        assert!(
            json.contains(
                r#""state": "draining",
      "unresponsive": false,"#
            ),
            "{json}"
        );
        let text = crate::stats::status::text(&s);
        assert!(
            text.contains(" unresponsive ") && text.contains("no heartbeat for 12s"),
            "{text}"
        );
    }
}
