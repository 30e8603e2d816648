//! Serving `--stats`: hyper (HTTP/1.1) on a current-thread tokio runtime of its own,
//! never on a Python thread and never on the tokio runtime that carries requests.
//!
//! Where it runs is the caller's choice, and it matters for fork safety: under a master
//! it runs in a helper process the master forks once (see `supervisor`), because the
//! master forks workers at any time and a tokio runtime in the master would be
//! inherited by every worker (its epoll, and tokio's process-wide signal pipe, which
//! master and workers would then share). In a single process (no master, no fork after
//! start) it runs on a thread of its own ([`spawn`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::{metrics, status, Snapshot, Source, StatsError};
use crate::server::listener::{self, Bound, BoundSocket, ListenAddr, SocketOptions};

/// Connections served at once with keep-alive. Scrapers and `postern status` need a
/// handful.
const MAX_CONNECTIONS: usize = 32;
/// Connections served past [`MAX_CONNECTIONS`], one request each and with
/// [`SPARE_HEAD_TIMEOUT`]: connections held open (half a head, an idle keep-alive) can
/// fill the first places, and `/ping` (a liveness probe with a timeout of its own) must
/// not wait behind them. More than both wait in the listen queue.
const SPARE_CONNECTIONS: usize = 224;
/// A client that sends no complete request head in this time is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for a connection in a spare place.
const SPARE_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// No connection lives longer than this (keep-alive included).
const CONNECTION_LIMIT: Duration = Duration::from_secs(120);

/// Warns when the `--stats` address is TCP off loopback (the listeners' own rule:
/// ::ffff:127.0.0.1 is loopback too). A start and `--check` say it alike.
pub fn warn_if_public(addr: &ListenAddr) {
    if !listener::is_local_only(addr) {
        tracing::warn!(
            stats = %addr,
            "--stats listens on a non-loopback address: anyone who can reach it sees request paths and metrics (there is no authentication); prefer 127.0.0.1:PORT or unix:PATH"
        );
    }
}

/// Binds the `--stats` address (at start, with the other listeners, so a taken
/// address stops postern at once). A TCP address off loopback logs a warning: the
/// endpoint has no authentication and shows request paths.
/// A `unix:` address gets the listeners' `--socket-mode` and `--socket-owner` (`opts`),
/// so whoever may reach the app's socket may run `postern status` on it.
pub fn bind(addr: &ListenAddr, opts: &SocketOptions) -> Result<Bound, StatsError> {
    warn_if_public(addr);
    let opts = SocketOptions {
        backlog: 64,
        ..opts.clone()
    };
    listener::bind(addr, &opts).map_err(|source| StatsError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves the endpoint on `bound` until the process exits (or the runtime cannot
/// start). Blocks the calling thread.
pub fn serve(bound: Bound, source: Source) -> Result<(), StatsError> {
    // Its answers to Unix-socket clients are write(2)s (no MSG_NOSIGNAL), and it serves
    // while the app is imported, before postern can ignore a SIGPIPE the app restored.
    // regression (review 400): a client leaving then ended the process (exit 141).
    crate::sigpipe::block_on_this_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatsError::Runtime)?;
    tracing::info!(stats = %bound.addr, "stats endpoint: /metrics /status /ping");
    rt.block_on(accept_loop(bound, source))
}

/// Serves the endpoint on a thread of its own (a single process: no master).
pub fn spawn(bound: Bound, source: Source) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("postern-stats".into())
        .spawn(move || {
            if let Err(e) = serve(bound, source) {
                tracing::error!("{e}");
            }
        })?;
    Ok(())
}

async fn accept_loop(bound: Bound, source: Source) -> Result<(), StatsError> {
    let runtime = |e| StatsError::Runtime(e);
    match bound.socket {
        BoundSocket::Tcp(l) => {
            l.set_nonblocking(true).map_err(runtime)?;
            let l = tokio::net::TcpListener::from_std(l).map_err(runtime)?;
            serve_on(async || l.accept().await.map(|(s, _)| s), source).await
        }
        BoundSocket::Unix(l) => {
            l.set_nonblocking(true).map_err(runtime)?;
            let l = tokio::net::UnixListener::from_std(l).map_err(runtime)?;
            serve_on(async || l.accept().await.map(|(s, _)| s), source).await
        }
    }
}

/// Serves every connection `accept` returns, at most [`MAX_CONNECTIONS`] at once with
/// keep-alive, then [`SPARE_CONNECTIONS`] more one request each.
/// regression: 32 connections holding half a head (or idle after a keep-alive request)
/// took every place for 10 s each, and `/ping`, the Kubernetes liveness probe (2 s
/// timeout), went unanswered while the workers served.
async fn serve_on<S>(
    accept: impl AsyncFn() -> std::io::Result<S>,
    source: Source,
) -> Result<(), StatsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let spares = Arc::new(Semaphore::new(SPARE_CONNECTIONS));
    loop {
        let (permit, spare) = tokio::select! {
            biased;
            p = Arc::clone(&permits).acquire_owned() => (p, false),
            p = Arc::clone(&spares).acquire_owned() => (p, true),
        };
        match accept().await {
            Ok(s) => {
                let source = Arc::clone(&source);
                tokio::spawn(async move {
                    connection(s, source, spare).await;
                    drop(permit);
                });
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "stats endpoint: accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection; `spare`: one request, and a head within [`SPARE_HEAD_TIMEOUT`].
async fn connection<S>(stream: S, source: Source, spare: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { Ok::<_, Infallible>(respond(&req, &*source)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(!spare)
        .header_read_timeout(if spare {
            SPARE_HEAD_TIMEOUT
        } else {
            HEAD_TIMEOUT
        })
        .serve_connection(TokioIo::new(stream), service);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIMIT, conn).await {
        tracing::debug!(error = %e, "stats endpoint: connection failed");
    }
}

/// The answer to one request.
pub fn respond<B>(req: &Request<B>, source: &dyn Fn() -> Snapshot) -> Response<Full<Bytes>> {
    let (status, kind, body) = route(req.method(), req.uri().path(), req.uri().query(), source);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(hyper::header::SERVER, HeaderValue::from_static(SERVER));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

const TEXT: &str = "text/plain; charset=utf-8";
/// The `Server` header of every answer: `postern status` checks it, so that pointed at
/// another HTTP server (nginx, the app) it says so instead of printing that page.
pub const SERVER: &str = concat!("postern/", env!("CARGO_PKG_VERSION"));
const JSON: &str = "application/json";

/// Routing, without I/O: (status, content type, body).
fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    source: &dyn Fn() -> Snapshot,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        );
    }
    match path {
        "/metrics" => (StatusCode::OK, metrics::CONTENT_TYPE, metrics::encode(&source())),
        "/status" => {
            let format = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| kv.strip_prefix("format="));
            match format {
                None | Some("json") => (StatusCode::OK, JSON, status::json(&source())),
                Some("text") => (StatusCode::OK, TEXT, status::text(&source())),
                Some(other) => (
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!("format={other}: use format=json (the default) or format=text\n"),
                ),
            }
        }
        "/ping" => {
            let snapshot = source();
            if snapshot.answers() {
                (StatusCode::OK, TEXT, "pong\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    snapshot.not_answering().into(),
                )
            }
        }
        "/" => (
            StatusCode::OK,
            TEXT,
            "postern stats: /metrics (Prometheus), /status (JSON; ?format=text for a table), /ping\n"
                .into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /status or /ping\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::sample;
    use crate::stats::{Cause, WorkerState};

    fn get(path: &str, snapshot: Snapshot) -> (StatusCode, &'static str, String) {
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        route(&Method::GET, p, q, &move || snapshot.clone())
    }

    #[test]
    fn routes() {
        let (s, kind, body) = get("/metrics", sample());
        assert_eq!((s, kind), (StatusCode::OK, metrics::CONTENT_TYPE));
        assert!(body.contains("postern_requests_total"));
        let (s, kind, body) = get("/status", sample());
        assert_eq!((s, kind), (StatusCode::OK, JSON));
        assert!(body.starts_with('{'));
        let (s, kind, body) = get("/status?format=text", sample());
        assert_eq!((s, kind), (StatusCode::OK, TEXT));
        assert!(body.contains("PID"));
        assert_eq!(
            get("/status?format=xml", sample()).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(get("/nope", sample()).0, StatusCode::NOT_FOUND);
        let post = route(&Method::POST, "/ping", None, &sample);
        assert_eq!(post.0, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn ping_needs_a_serving_worker() {
        let (s, _, body) = get("/ping", sample());
        assert_eq!((s, body.as_str()), (StatusCode::OK, "pong\n"));
        let mut booting = sample();
        for w in &mut booting.workers {
            w.state = WorkerState::Starting;
        }
        assert_eq!(get("/ping", booting).0, StatusCode::SERVICE_UNAVAILABLE);
        let mut none = sample();
        none.workers.clear();
        assert_eq!(get("/ping", none).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    // regression: /ping said 503 whenever the only workers were being recycled
    // (--max-requests with one worker: most of the time under load), though every
    // request was served once the replacement was up.
    #[test]
    fn ping_holds_while_workers_are_replaced_on_purpose() {
        let replacing = |cause: Cause, stopping: bool| {
            let mut s = sample();
            s.stopping = stopping;
            s.workers.truncate(1);
            s.workers[0].state = WorkerState::Starting;
            s.workers[0].start_cause = cause;
            get("/ping", s).0
        };
        for planned in [
            Cause::MaxRequests,
            Cause::MaxRss,
            Cause::MaxLifetime,
            Cause::Reload,
        ] {
            assert_eq!(replacing(planned, false), StatusCode::OK, "{planned:?}");
            assert_eq!(replacing(planned, true), StatusCode::SERVICE_UNAVAILABLE);
        }
        for failed in [
            Cause::Boot,
            Cause::Crash,
            Cause::BootFailure,
            Cause::Timeout,
        ] {
            assert_eq!(
                replacing(failed, false),
                StatusCode::SERVICE_UNAVAILABLE,
                "{failed:?}"
            );
        }
        // The worker that recycles itself, before the master has started its
        // replacement; a worker killed for --timeout or stopping is not recycling.
        let leaving = |cause: Cause| {
            let mut s = sample();
            s.workers.truncate(1);
            s.workers[0].state = WorkerState::Draining;
            s.workers[0].leaving = Some(cause);
            get("/ping", s).0
        };
        assert_eq!(leaving(Cause::MaxRequests), StatusCode::OK);
        assert_eq!(leaving(Cause::Timeout), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(leaving(Cause::Stop), StatusCode::SERVICE_UNAVAILABLE);
    }
}
