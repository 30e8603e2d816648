//! `postern bench ADDR`: a load generator that speaks uwsgi, FastCGI (with or without
//! FCGI_KEEP_CONN) and SCGI straight to an app server's socket, so that postern and
//! uWSGI can be measured without nginx in the loop, and workers sized. It sends the
//! request `postern request` would ([`super::encode`]) on `--connections` connections
//! for `--duration` seconds and reports req/s, latency percentiles, status classes and
//! errors by kind, as text or JSON.
//!
//! One plain thread per connection with blocking sockets, not tokio: a blocking exchange
//! is connect, write, read, close (keep-conn: write, read), the syscalls nginx's
//! upstream side makes minus epoll, so on the 2-core machines this is meant for the
//! generator takes as little CPU from the server as it can; and each thread times its
//! own request with no scheduler queue between the socket and the clock. A thread costs
//! a small stack ([`STACK`]), fine up to the [`MAX_CONNECTIONS`] allowed, more than a
//! sized worker pool needs.
//!
//! Every request started before the deadline is finished (or times out), so the
//! responses counted are the requests the server's access log shows.

use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::encode::Request;
use super::fastcgi::{self, ReadError, Stdout as _};
use super::url::{is_socket_file, parse_url, Conn, Endpoint, Scheme, Target, Url};
use super::{ClientError, EXIT_CONNECT};
use crate::proto::response;

/// Connections (threads) allowed: enough to saturate any worker pool a machine runs.
pub const MAX_CONNECTIONS: usize = 4096;
/// Stack of a load thread: the FastCGI reader's 16 KiB read buffer plus ordinary calls.
const STACK: usize = 128 * 1024;

/// `postern bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Where to send: a URL as `postern request` takes it (uwsgi://HOST:PORT/path,
    /// fastcgi+unix:///run/app.sock/path, scgi://…), or HOST:PORT, unix:PATH or a
    /// socket PATH with --protocol.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Concurrent connections, each one thread sending requests one after the other.
    #[arg(short, long, value_name = "N", default_value_t = 10)]
    pub connections: usize,
    /// Seconds to send requests for; requests under way then are finished.
    #[arg(short, long, value_name = "SECONDS", default_value_t = 10.0)]
    pub duration: f64,
    /// The protocol when ADDR is not a URL (default uwsgi); with a URL, it must match.
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub protocol: Option<BenchProtocol>,
    /// FastCGI: set FCGI_KEEP_CONN and reuse each connection for the next request, like
    /// nginx with `fastcgi_keep_conn on` and an upstream `keepalive`.
    #[arg(long)]
    pub keep_conn: bool,
    /// Path and query to request (default: the URL's, or /).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Request method (default GET, or POST with --body-size).
    #[arg(short = 'X', long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Send a body of N bytes (with its CONTENT_LENGTH): 3000, 64k, 10M.
    #[arg(long, value_name = "N", value_parser = crate::size::parse_usize)]
    pub body_size: Option<usize>,
    /// Request header (repeatable), e.g. -H 'Accept: text/html'.
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// Seconds to wait for a connect, a write or a read before counting a timeout; a
    /// request under way at the end of --duration has this long to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: BenchFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProtocol {
    Uwsgi,
    Fastcgi,
    Scgi,
}

impl BenchProtocol {
    fn scheme(self) -> Scheme {
        match self {
            BenchProtocol::Uwsgi => Scheme::Uwsgi,
            BenchProtocol::Fastcgi => Scheme::FastCgi,
            BenchProtocol::Scgi => Scheme::Scgi,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    Text,
    Json,
}

/// The URL a bench run sends to: ADDR as a URL, or a bare address plus `--protocol`;
/// `--path` replaces the URL's path.
fn bench_url(args: &BenchArgs) -> Result<Url, String> {
    let mut url = if args.addr.contains("://") {
        let url = parse_url(&args.addr, is_socket_file).map_err(|e| e.to_string())?;
        if let Some(p) = args.protocol {
            if p.scheme() != url.scheme {
                return Err(format!(
                    "--protocol {} contradicts the URL's {}",
                    p.scheme().name(),
                    url.scheme.name()
                ));
            }
        }
        url
    } else {
        let scheme = args.protocol.map_or(Scheme::Uwsgi, BenchProtocol::scheme);
        let target = match args.addr.strip_prefix("unix:") {
            Some(path) => Target::Unix(path.into()),
            None if args.addr.starts_with('/') || args.addr.starts_with('.') => {
                Target::Unix(args.addr.clone().into())
            }
            None => {
                let url = parse_url(&format!("{}://{}", scheme.name(), args.addr), |_| false)
                    .map_err(|e| e.to_string())?;
                if url.uri != "/" {
                    return Err(format!(
                        "{:?}: expected HOST:PORT, unix:PATH or a URL",
                        args.addr
                    ));
                }
                url.target
            }
        };
        Url {
            scheme,
            target,
            uri: "/".into(),
        }
    };
    if let Some(path) = &args.path {
        if !path.starts_with('/') {
            return Err(format!("--path {path:?} must start with /"));
        }
        url.uri = path.clone();
    }
    Ok(url)
}

/// What every load thread sends and how.
struct Plan {
    endpoint: Endpoint,
    scheme: Scheme,
    keep_conn: bool,
    /// The whole request, written with one `write_all`.
    request: Vec<u8>,
    /// A HEAD request's answer has no body to check against its Content-Length.
    head: bool,
    timeout: Duration,
}

/// Runs the subcommand; returns the process exit code: 0 once the run is over (errors
/// are in the report), 7 when nothing listens at the start or not a single response
/// came back.
pub fn run(args: &BenchArgs) -> Result<i32, ClientError> {
    let usage = ClientError::Usage;
    let url = bench_url(args).map_err(usage)?;
    if args.keep_conn && url.scheme != Scheme::FastCgi {
        return Err(usage(format!(
            "--keep-conn is for FastCGI only ({} has one request per connection)",
            url.scheme.name()
        )));
    }
    if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
        return Err(usage(format!(
            "--connections must be 1 to {MAX_CONNECTIONS}"
        )));
    }
    let seconds = |name: &str, value: f64| {
        Duration::try_from_secs_f64(value)
            .ok()
            // Bounded so that a deadline computed from it cannot overflow.
            .filter(|d| !d.is_zero() && d.as_secs() < 1 << 32)
            .ok_or_else(|| usage(format!("--{name} must be a positive number of seconds")))
    };
    let (duration, timeout) = (
        seconds("duration", args.duration)?,
        seconds("timeout", args.timeout)?,
    );
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| {
            if args.body_size.is_some() {
                "POST"
            } else {
                "GET"
            }
            .into()
        })
        .to_ascii_uppercase();
    let body = vec![b'x'; args.body_size.unwrap_or(0)];
    let request = Request {
        method: method.clone(),
        headers: &args.headers,
        body: args.body_size.map(|_| &body[..]),
        streamed: false,
        keep_conn: args.keep_conn,
    };
    let label = url.target.label();
    let endpoint = url
        .target
        .resolve()
        .map_err(|source| ClientError::Connect {
            target: label.clone(),
            source,
        })?;
    let plan = Arc::new(Plan {
        endpoint,
        scheme: url.scheme,
        keep_conn: args.keep_conn,
        request: request.encode(&url).map_err(usage)?.concat(),
        head: method == "HEAD",
        timeout,
    });
    // Nothing listening at the start is a mistake to say at once, not a run of refused
    // connects (the server sees a connection that sends nothing).
    drop(
        plan.endpoint
            .connect(timeout)
            .map_err(|source| ClientError::Connect {
                target: label.clone(),
                source,
            })?,
    );

    let tally = load(&plan, args.connections, duration)
        .map_err(|e| usage(format!("cannot start {} threads: {e}", args.connections)))?;
    let report = Report::new(&url, &label, args, &tally);
    let text = match args.format {
        BenchFormat::Text => report.text(),
        BenchFormat::Json => format!("{}\n", serde_json::to_string(&report).expect("plain data")),
    };
    super::output::write_stdout(text.as_bytes())?;
    Ok(if tally.responses == 0 {
        EXIT_CONNECT
    } else {
        0
    })
}

/// Start and deadline of the run, `None` until every thread is spawned.
type Gate = (Mutex<Option<(Instant, Instant)>>, Condvar);

/// Starts the threads together, lets them run for `duration`, and adds up what they saw.
fn load(plan: &Arc<Plan>, connections: usize, duration: Duration) -> io::Result<Tally> {
    // The threads wait at the gate until all are spawned, so that the clock starts when
    // every connection can go.
    let gate: Arc<Gate> = Arc::default();
    let open = |start: Instant, deadline: Instant| {
        *gate.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((start, deadline));
        gate.1.notify_all();
    };
    let mut threads = Vec::with_capacity(connections);
    for i in 0..connections {
        let (plan, gate) = (plan.clone(), gate.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .stack_size(STACK)
            .spawn(move || {
                let (lock, cvar) = &*gate;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (start, deadline) = cvar
                    .wait_while(guard, |times| times.is_none())
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("the gate opens with the times");
                // A real run (not the gate opened to let threads go after a failed
                // spawn) makes at least one request on each connection.
                let mut tally = worker(&plan, deadline, deadline > start);
                tally.finished = start.elapsed();
                tally
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Let the threads already started go with a deadline already past.
                let now = Instant::now();
                open(now, now);
                threads.into_iter().for_each(|t| drop(t.join()));
                return Err(e);
            }
        }
    }
    let now = Instant::now();
    open(now, now + duration);
    let mut total = Tally::default();
    for t in threads {
        total.add(t.join().expect("a bench thread panicked"));
    }
    Ok(total)
}

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// ECONNREFUSED, or ENOENT for a Unix socket that is not there: nothing listens.
    ConnectRefused,
    /// Any other connect error (EAGAIN on a full Unix listen queue, unreachable…).
    ConnectFailed,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// No progress for `--timeout` seconds.
    Timeout,
    /// Bytes that are not a complete response in the protocol spoken.
    BadResponse,
}

impl Failure {
    fn of_connect(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Failure::ConnectRefused,
            io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::ConnectFailed,
        }
    }

    fn of_io(e: &io::Error) -> Failure {
        match e.kind() {
            // A socket read timeout shows as EAGAIN.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::InvalidData => Failure::BadResponse,
            _ => Failure::Reset,
        }
    }
}

/// The outcome of one exchange on a connection.
type Exchange = Result<u16, (Failure, Received)>;

/// Whether anything of the answer arrived before a failure: on a kept connection,
/// nothing at all means the server had closed it after the previous response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Nothing,
    Something,
}

/// At most this much of a response is kept (its head and the start of its body); the
/// rest is only counted, so a response of any length (or one that never ends) takes
/// bounded memory.
const KEEP: usize = 64 * 1024;

/// A response as a load thread keeps it: its first [`KEEP`] bytes and a count of the
/// rest.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    more: usize,
}

impl Kept {
    fn clear(&mut self) {
        self.bytes.clear();
        self.more = 0;
    }
}

impl fastcgi::Stdout for Kept {
    fn append(&mut self, content: &[u8]) -> Result<(), fastcgi::ReadError> {
        let n = KEEP.saturating_sub(self.bytes.len()).min(content.len());
        self.bytes.extend_from_slice(&content[..n]);
        self.more += content.len() - n;
        Ok(())
    }

    fn received(&self) -> usize {
        self.bytes.len() + self.more
    }
}

/// Buffers a load thread reuses from one request to the next.
#[derive(Default)]
struct Buffers {
    response: Kept,
    /// FastCGI bytes read past a record (none expected after END_REQUEST).
    records: Vec<u8>,
}

fn connect(plan: &Plan) -> Result<Conn, Failure> {
    let conn = plan
        .endpoint
        .connect(plan.timeout)
        .map_err(|e| Failure::of_connect(&e))?;
    if let Conn::Tcp(s) = &conn {
        // One write per request: never wait for an ACK to send the tail of a body.
        s.set_nodelay(true).map_err(|e| Failure::of_connect(&e))?;
    }
    Ok(conn)
}

/// One load thread: request after request until `deadline`; at least one when
/// `at_least_one` (a thread woken after a short --duration had passed made none, and
/// the run reported 0 responses).
fn worker(plan: &Plan, deadline: Instant, at_least_one: bool) -> Tally {
    let mut tally = Tally::default();
    let mut bufs = Buffers::default();
    let mut kept: Option<Conn> = None;
    // A request under way at the deadline has --timeout more to finish: one whose
    // response keeps trickling in (or never ends) would otherwise hold the run forever.
    let cutoff = deadline.max(Instant::now()) + plan.timeout;
    let mut first = at_least_one;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        let started = Instant::now();
        let reused = kept.is_some();
        let mut conn = match kept.take().map_or_else(|| connect(plan), Ok) {
            Ok(c) => c,
            Err(f) => {
                tally.failed(f);
                continue;
            }
        };
        let mut outcome = exchange(&mut conn, plan, &mut bufs, cutoff);
        if reused && matches!(outcome, Err((_, Received::Nothing))) {
            // The server closed the kept connection after its last response (uWSGI
            // ignores FCGI_KEEP_CONN): send again on a new one, as nginx does for a GET.
            tally.kept_closed += 1;
            bufs.records.clear();
            conn = match connect(plan) {
                Ok(c) => c,
                Err(f) => {
                    tally.failed(f);
                    continue;
                }
            };
            outcome = exchange(&mut conn, plan, &mut bufs, cutoff);
        }
        match outcome {
            Ok(status) => {
                tally.responded(status, started.elapsed());
                if plan.keep_conn {
                    kept = Some(conn);
                }
            }
            Err((f, _)) => {
                bufs.records.clear();
                tally.failed(f);
            }
        }
    }
    tally
}

/// A connection whose reads and writes fail as timed out once `cutoff` has passed. The
/// socket's timeouts bound a call that waits, not an exchange that makes progress byte
/// by byte.
struct Cutoff<'a> {
    conn: &'a mut Conn,
    cutoff: Instant,
}

impl Read for Cutoff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.cutoff {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.conn.read(buf)
    }
}

impl Write for Cutoff<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if Instant::now() >= self.cutoff {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.conn.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// Sends the request and reads the whole response (giving up at `cutoff`); returns
/// its status code.
fn exchange(conn: &mut Conn, plan: &Plan, bufs: &mut Buffers, cutoff: Instant) -> Exchange {
    let io_failure = |e: &io::Error, received| (Failure::of_io(e), received);
    let conn = &mut Cutoff { conn, cutoff };
    conn.write_all(&plan.request)
        .map_err(|e| io_failure(&e, Received::Nothing))?;
    bufs.response.clear();
    if plan.scheme == Scheme::FastCgi {
        let before = bufs.records.len();
        let read = fastcgi::read_response(
            conn,
            &mut bufs.records,
            &mut bufs.response,
            &mut fastcgi::Ignore,
        );
        let received = if bufs.response.received() == 0 && bufs.records.len() == before {
            Received::Nothing
        } else {
            Received::Something
        };
        match read {
            Ok(()) => {}
            Err(ReadError::Io(e)) => return Err(io_failure(&e, received)),
            Err(ReadError::Cut(_)) => return Err((Failure::Reset, received)),
            Err(ReadError::Protocol(_) | ReadError::Client(_)) => {
                return Err((Failure::BadResponse, received))
            }
        }
    } else {
        // uwsgi, SCGI: the response runs to EOF.
        let mut chunk = [0; 16 * 1024];
        loop {
            match conn.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    // Kept never refuses.
                    let _ = bufs.response.append(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let received = if bufs.response.received() == 0 {
                        Received::Nothing
                    } else {
                        Received::Something
                    };
                    return Err(io_failure(&e, received));
                }
            }
        }
        if bufs.response.received() == 0 {
            return Err((Failure::Reset, Received::Nothing));
        }
    }
    let Kept { bytes, more } = &bufs.response;
    check_response(bytes, *more, plan.head).map_err(|f| (f, Received::Something))
}

/// The status of a complete response: an HTTP status line (uwsgi) or a CGI head
/// (FastCGI, SCGI; either is accepted on any protocol, as nginx does), a head that
/// ends, and a body as long as its Content-Length says (a shorter one was cut). `more`
/// bytes followed `resp` (not kept).
fn check_response(resp: &[u8], more: usize, head_request: bool) -> Result<u16, Failure> {
    let (code, head) = if resp.starts_with(b"HTTP/") {
        let code = response::status_code(resp).ok_or(Failure::BadResponse)?;
        let line_end = resp
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Failure::BadResponse)?;
        let rest = &resp[line_end + 1..];
        let head = response::parse_cgi_head(rest).map_err(|_| Failure::BadResponse)?;
        (
            code,
            (
                head.header("Content-Length"),
                line_end + 1 + head.body_start,
            ),
        )
    } else {
        let head = response::parse_cgi_head(resp).map_err(|_| Failure::BadResponse)?;
        (head.code, (head.header("Content-Length"), head.body_start))
    };
    let (length, body_start) = head;
    if let Some(length) = length {
        let no_body = head_request || response::status_has_no_body(code);
        let length: usize = std::str::from_utf8(length)
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or(Failure::BadResponse)?;
        let body = resp.len() - body_start + more;
        if !no_body && body < length {
            return Err(Failure::Reset);
        }
        if !no_body && body > length {
            return Err(Failure::BadResponse);
        }
    }
    Ok(code)
}

/// Latencies in nanoseconds, log-linear: exact below 128 ns, then 128 buckets per power
/// of two (at most 0.8 % off), so a long run takes memory for its range, not its count.
#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
}

const SUB_BITS: u32 = 7;

impl Histogram {
    fn index(ns: u64) -> usize {
        if ns < 1 << SUB_BITS {
            return ns as usize;
        }
        let shift = 63 - ns.leading_zeros() - SUB_BITS;
        (((shift + 1) as usize) << SUB_BITS) + (ns >> shift) as usize - (1 << SUB_BITS)
    }

    /// The smallest value that lands in bucket `i`.
    fn low(i: usize) -> u64 {
        if i < 1 << SUB_BITS {
            return i as u64;
        }
        let shift = (i >> SUB_BITS) - 1;
        (((i & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)) as u64) << shift
    }

    fn record(&mut self, d: Duration) {
        let i = Self::index(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX >> 1));
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
    }

    fn add(&mut self, other: &Histogram) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The value under which a fraction `q` of the samples fall (the middle of its
    /// bucket); `None` without samples.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = (Self::low(i), Self::low(i + 1));
                return Some(Duration::from_nanos(low + (high - low) / 2));
            }
        }
        None
    }
}

/// What a thread (then the whole run) saw.
#[derive(Default)]
struct Tally {
    responses: u64,
    /// Responses by status class: index 1 for 1xx … 5 for 5xx, 0 for anything else.
    classes: [u64; 6],
    errors: [u64; 5],
    /// Kept FastCGI connections the server had closed (the request was sent again).
    kept_closed: u64,
    latency: Histogram,
    latency_sum: Duration,
    latency_max: Duration,
    /// When the thread's last request ended, from the start.
    finished: Duration,
}

impl Tally {
    fn responded(&mut self, status: u16, took: Duration) {
        self.responses += 1;
        self.classes[usize::from(status / 100).min(6) % 6] += 1;
        self.latency.record(took);
        self.latency_sum += took;
        self.latency_max = self.latency_max.max(took);
    }

    fn failed(&mut self, f: Failure) {
        self.errors[f as usize] += 1;
    }

    fn add(&mut self, other: Tally) {
        self.responses += other.responses;
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.kept_closed += other.kept_closed;
        self.latency.add(&other.latency);
        self.latency_sum += other.latency_sum;
        self.latency_max = self.latency_max.max(other.latency_max);
        self.finished = self.finished.max(other.finished);
    }
}

/// The report, as printed (`--format json` prints these fields).
#[derive(serde::Serialize)]
struct Report {
    target: String,
    protocol: &'static str,
    keep_conn: bool,
    method: String,
    path: String,
    body_size: usize,
    connections: usize,
    /// Seconds from the start until the last request ended.
    duration_s: f64,
    responses: u64,
    requests_per_s: f64,
    status: StatusClasses,
    non_2xx: u64,
    latency_ms: Latency,
    errors: Errors,
    errors_total: u64,
    /// Kept FastCGI connections found closed by the server (request sent again).
    kept_conn_closed: u64,
}

#[derive(serde::Serialize)]
struct StatusClasses {
    #[serde(rename = "1xx")]
    c1: u64,
    #[serde(rename = "2xx")]
    c2: u64,
    #[serde(rename = "3xx")]
    c3: u64,
    #[serde(rename = "4xx")]
    c4: u64,
    #[serde(rename = "5xx")]
    c5: u64,
    other: u64,
}

#[derive(serde::Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(serde::Serialize)]
struct Errors {
    connect_refused: u64,
    connect_failed: u64,
    reset: u64,
    timeout: u64,
    bad_response: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    fn new(url: &Url, label: &str, args: &BenchArgs, t: &Tally) -> Report {
        let secs = t.finished.as_secs_f64();
        let q = |q| t.latency.quantile(q).map_or(0.0, ms);
        let e = |f: Failure| t.errors[f as usize];
        Report {
            target: label.to_owned(),
            protocol: url.scheme.name(),
            keep_conn: args.keep_conn,
            method: args
                .method
                .clone()
                .unwrap_or_else(|| {
                    if args.body_size.is_some() {
                        "POST"
                    } else {
                        "GET"
                    }
                    .into()
                })
                .to_ascii_uppercase(),
            path: url.uri.clone(),
            body_size: args.body_size.unwrap_or(0),
            connections: args.connections,
            duration_s: (secs * 1e3).round() / 1e3,
            responses: t.responses,
            requests_per_s: if secs > 0.0 {
                (t.responses as f64 / secs * 10.0).round() / 10.0
            } else {
                0.0
            },
            status: StatusClasses {
                c1: t.classes[1],
                c2: t.classes[2],
                c3: t.classes[3],
                c4: t.classes[4],
                c5: t.classes[5],
                other: t.classes[0],
            },
            non_2xx: t.responses - t.classes[2],
            latency_ms: Latency {
                mean: if t.responses > 0 {
                    ms(t.latency_sum / u32::try_from(t.responses).unwrap_or(u32::MAX))
                } else {
                    0.0
                },
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                max: ms(t.latency_max),
            },
            errors: Errors {
                connect_refused: e(Failure::ConnectRefused),
                connect_failed: e(Failure::ConnectFailed),
                reset: e(Failure::Reset),
                timeout: e(Failure::Timeout),
                bad_response: e(Failure::BadResponse),
            },
            errors_total: t.errors.iter().sum(),
            kept_conn_closed: t.kept_closed,
        }
    }

    fn text(&self) -> String {
        let body = if self.body_size > 0 {
            format!(" with a {}-byte body", self.body_size)
        } else {
            String::new()
        };
        let mut s = format!(
            "{} {}{body} over {} to {}{}, {} connection{}, {:.2} s\n",
            self.method,
            self.path,
            self.protocol,
            self.target,
            if self.keep_conn { " (keep-conn)" } else { "" },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.duration_s,
        );
        let st = &self.status;
        let classes: Vec<String> = [
            ("1xx", st.c1),
            ("3xx", st.c3),
            ("4xx", st.c4),
            ("5xx", st.c5),
            ("other", st.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
        s += &format!(
            "  requests/s   {:.1}\n  responses    {} ({} 2xx{})\n",
            self.requests_per_s,
            self.responses,
            st.c2,
            if classes.is_empty() {
                String::new()
            } else {
                format!(", {}", classes.join(", "))
            }
        );
        let l = &self.latency_ms;
        s += &format!(
            "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}\n",
            l.p50, l.p90, l.p99, l.max, l.mean
        );
        let e = &self.errors;
        let kinds: Vec<String> = [
            ("connect refused", e.connect_refused),
            ("connect failed", e.connect_failed),
            ("reset", e.reset),
            ("timeout", e.timeout),
            ("bad response", e.bad_response),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
        s += &format!(
            "  errors       {}{}\n",
            self.errors_total,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        );
        if self.kept_conn_closed > 0 {
            s += &format!(
                "  kept connections closed by the server: {} (those requests were sent again \
                 on a new connection)\n",
                self.kept_conn_closed
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for i in 1..4000 {
            let low = Histogram::low(i);
            assert!(low > last, "{i}");
            assert_eq!(Histogram::index(low), i);
            assert_eq!(Histogram::index(low - 1), i - 1);
            // Width at most 1/128 of the value.
            assert!((Histogram::low(i + 1) - low) * 128 <= low.max(128), "{i}");
            last = low;
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let p = |q| h.quantile(q).unwrap().as_secs_f64() * 1e6;
        assert!((p(0.5) - 50.0).abs() < 0.5, "{}", p(0.5));
        assert!((p(0.99) - 99.0).abs() < 1.0, "{}", p(0.99));
        assert!((p(1.0) - 100.0).abs() < 1.0, "{}", p(1.0));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(1));
        h.add(&other);
        assert!((h.quantile(1.0).unwrap().as_secs_f64() - 1.0).abs() < 0.01);
    }

    #[test]
    fn histogram_quantiles_match_the_sorted_samples() {
        // A bimodal spread from 20 µs to 40 ms (a simple LCG, fixed seed).
        let mut x: u64 = 12345;
        let mut samples: Vec<u64> = (0..50_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let base = if i % 3 == 0 { 20_000 } else { 150_000 };
                base + (x >> 33) % (if i % 100 == 0 { 40_000_000 } else { 50_000 })
            })
            .collect();
        let mut h = Histogram::default();
        for &ns in &samples {
            h.record(Duration::from_nanos(ns));
        }
        samples.sort_unstable();
        for q in [0.5, 0.9, 0.99, 1.0] {
            let exact = samples[((q * samples.len() as f64).ceil() as usize).max(1) - 1] as f64;
            let got = h.quantile(q).unwrap().as_nanos() as f64;
            assert!(
                (got - exact).abs() <= exact / 128.0,
                "q {q}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn keeps_the_start_of_a_long_response_and_counts_the_rest() {
        let mut kept = Kept::default();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n";
        kept.append(head).unwrap();
        for _ in 0..100 {
            kept.append(&[b'x'; 2000]).unwrap();
        }
        assert_eq!(kept.bytes.len(), KEEP);
        assert_eq!(kept.received(), head.len() + 200_000);
        assert_eq!(check_response(&kept.bytes, kept.more, false), Ok(200));
        assert_eq!(
            check_response(&kept.bytes, kept.more - 1, false),
            Err(Failure::Reset)
        );
        assert_eq!(
            check_response(&kept.bytes, kept.more + 1, false),
            Err(Failure::BadResponse)
        );
        kept.clear();
        assert_eq!(kept.received(), 0);
    }

    #[test]
    fn checks_responses_for_completeness() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(check_response(ok, 0, false), Ok(200));
        // Cut in the body, in the head, or before the status code.
        assert_eq!(
            check_response(&ok[..ok.len() - 1], 0, false),
            Err(Failure::Reset)
        );
        assert_eq!(
            check_response(&ok[..20], 0, false),
            Err(Failure::BadResponse)
        );
        assert_eq!(
            check_response(b"HTTP/1.1", 0, false),
            Err(Failure::BadResponse)
        );
        // Too long; no Content-Length (then EOF ends it); a CGI head.
        let long = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nok";
        assert_eq!(check_response(long, 0, false), Err(Failure::BadResponse));
        assert_eq!(
            check_response(b"HTTP/1.1 404 Not Found\r\n\r\nwhatever", 0, false),
            Ok(404)
        );
        assert_eq!(
            check_response(b"Status: 503\r\nContent-Length: 0\r\n\r\n", 0, false),
            Ok(503)
        );
        assert_eq!(
            check_response(b"Content-Type: x\n\nbody", 0, false),
            Ok(200)
        );
        // HEAD and 304: the length describes a body that is not sent.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(check_response(head, 0, true), Ok(200));
        assert_eq!(check_response(head, 0, false), Err(Failure::Reset));
        assert_eq!(
            check_response(b"Status: 304\r\nContent-Length: 9\r\n\r\n", 0, false),
            Ok(304)
        );
        assert_eq!(
            check_response(b"garbage", 0, false),
            Err(Failure::BadResponse)
        );
    }

    // regression: a load thread woken after a short --duration had already passed (a
    // busy machine, `-d 0.01`) made no request, and the run said 0 responses.
    #[test]
    fn a_thread_woken_after_the_deadline_still_makes_one_request() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let Ok(mut conn) = conn else { return };
                let mut header = [0u8; 4];
                let _ = conn.read_exact(&mut header);
                let mut vars = vec![0; usize::from(u16::from_le_bytes([header[1], header[2]]))];
                let _ = conn.read_exact(&mut vars);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let url = bench_url(&args(&format!("127.0.0.1:{port}"))).unwrap();
        let request = Request {
            method: "GET".into(),
            headers: &[],
            body: None,
            streamed: false,
            keep_conn: false,
        };
        let plan = Plan {
            endpoint: url.target.resolve().unwrap(),
            scheme: url.scheme,
            keep_conn: false,
            request: request.encode(&url).unwrap().concat(),
            head: false,
            timeout: Duration::from_secs(5),
        };
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let tally = worker(&plan, past, true);
        assert_eq!((tally.responses, tally.classes[2]), (1, 1));
        // The gate opened after a failed spawn (a deadline already past): none.
        assert_eq!(worker(&plan, past, false).responses, 0);
    }

    fn args(addr: &str) -> BenchArgs {
        BenchArgs {
            addr: addr.into(),
            connections: 1,
            duration: 1.0,
            protocol: None,
            keep_conn: false,
            path: None,
            method: None,
            body_size: None,
            headers: Vec::new(),
            timeout: 1.0,
            format: BenchFormat::Text,
        }
    }

    #[test]
    fn takes_a_url_or_an_address_and_a_protocol() {
        let u = bench_url(&args("fastcgi://127.0.0.1:9000/hello?x=1")).unwrap();
        assert_eq!((u.scheme, u.uri.as_str()), (Scheme::FastCgi, "/hello?x=1"));
        let mut a = args("127.0.0.1:3031");
        let u = bench_url(&a).unwrap();
        assert_eq!(u.scheme, Scheme::Uwsgi);
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 3031
            }
        );
        a.protocol = Some(BenchProtocol::Scgi);
        a.path = Some("/p".into());
        let u = bench_url(&a).unwrap();
        assert_eq!((u.scheme, u.uri.as_str()), (Scheme::Scgi, "/p"));
        let mut a = args("unix:/run/app.sock");
        a.protocol = Some(BenchProtocol::Fastcgi);
        let u = bench_url(&a).unwrap();
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert_eq!(
            bench_url(&args("/run/app.sock")).unwrap().target,
            Target::Unix("/run/app.sock".into())
        );
        let mut a = args("uwsgi://h:1/");
        a.protocol = Some(BenchProtocol::Fastcgi);
        assert!(bench_url(&a).unwrap_err().contains("contradicts"));
        let mut a = args("h:1");
        a.path = Some("p".into());
        assert!(bench_url(&a).is_err());
        assert!(bench_url(&args("h:1/x")).is_err());
    }
}
