//! `postern request`: sends one request the way nginx's `uwsgi_pass`, `fastcgi_pass` or
//! `scgi_pass` would and prints the response `curl -i` style. Blocking std I/O: it is a
//! debugging and health-check tool, one request per run. `postern bench` ([`bench`])
//! sends the same requests in a loop to measure a server.
//!
//! - `uwsgi://…`: one uwsgi packet plus the body; the answer (an HTTP status line and
//!   headers) is printed as it comes, up to EOF.
//! - `fastcgi://…`: BEGIN_REQUEST, PARAMS and STDIN records (docs/protocols.md §2.5); the
//!   STDOUT records up to END_REQUEST are the CGI response, STDERR goes to our stderr.
//!   `--no-content-length` streams the body with no CONTENT_LENGTH; `--get-values`
//!   sends an FCGI_GET_VALUES management record instead of a request (§2.7).
//! - `scgi://…`: one netstring head plus the body (§3); the CGI response runs to EOF.
//!
//! CGI responses (FastCGI, SCGI) are printed as HTTP: the `Status:` header (or 200, or
//! 302 with `Location`) becomes an `HTTP/1.1` status line. Exit codes: 0, 22 for a status
//! of 500 or more (600 to 999 too; 400 or more with `--fail`), 7 when the server cannot
//! be reached or answers badly, 2 for usage errors.
//!
//! - [`url`]: the URL grammar, resolving and connecting.
//! - [`encode`]: the CGI variables and the uwsgi, FastCGI or SCGI framing.
//! - [`fastcgi`]: reading FastCGI records back (responses, FCGI_GET_VALUES_RESULT).
//! - [`output`]: printing the answer and choosing the exit code.

pub mod bench;
pub mod encode;
pub mod fastcgi;
pub mod output;
pub mod url;

use std::io::{self, IsTerminal as _, Read, Write};
use std::time::{Duration, Instant};

use clap::Args;
use encode::Request;
use output::{Answer, Printer};
use url::{is_socket_file, parse_url, Conn, Scheme, UrlError};

/// Exit code for a connection failure (curl's "couldn't connect"), also used for an
/// answer cut short or not in the protocol spoken.
pub const EXIT_CONNECT: i32 = 7;
/// Exit code for an answer of 500 or more, a 5xx or a 600 to 999 (curl --fail's code).
pub const EXIT_5XX: i32 = 22;
/// Exit code for a malformed URL or option.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    /// A Unix socket URL with no socket file along its path: unreachable, as a refused
    /// connection is.
    #[error("{0}")]
    NoSocket(String),
    #[error("cannot connect to {target}: {}", io_text(source))]
    Connect { target: String, source: io::Error },
    #[error("talking to {target}: {}", io_text(source))]
    Io { target: String, source: io::Error },
    /// The server answered, but not in the protocol it was spoken to.
    #[error("bad answer from {target}: {reason}")]
    Protocol { target: String, reason: String },
    /// The connection closed before the response was complete.
    #[error("the response from {target} was cut: {reason}")]
    Cut { target: String, reason: String },
    /// Printing the response failed (stdout closed, disk full…).
    #[error("cannot write the response to stdout: {0}")]
    Output(io::Error),
}

/// A number of seconds on the command line (`--timeout`, `postern status --interval`):
/// finite, at least 0 and under 2^32 (a `Duration` of `inf` or `nan` panics), with a
/// unit as the server's own durations take one (`30s`, `500ms`, `5m`:
/// [`crate::size::seconds`]).
// regression (probe 393): `postern request --timeout inf` and `postern status --watch
// --interval nan` panicked ('cannot convert float seconds to Duration'). regression
// (review 395): `--timeout 30s` was refused, though the server takes it.
pub fn seconds_arg(s: &str) -> Result<f64, String> {
    let v = crate::size::seconds(s)?;
    if v.is_finite() && (0.0..4_294_967_296.0).contains(&v) {
        Ok(v)
    } else {
        Err("not a number of seconds from 0 to 4294967295".into())
    }
}

/// An I/O error as a user reads it: a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` fail
/// with EAGAIN, "Resource temporarily unavailable") is named as `--timeout`'s.
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out: the exchange was not over within --timeout".into()
        }
        _ => e.to_string(),
    }
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            _ => EXIT_CONNECT,
        }
    }
}

/// A connection, or a test's fake one.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// `postern request URL`: its options (the command itself is parsed in `config`).
#[derive(Args, Debug)]
pub struct RequestArgs {
    /// SCHEME://HOST[:PORT]/path?query, or SCHEME+unix:///path/to.sock/path?query
    /// (the socket is the longest leading part of the path that is a socket file;
    /// `SCHEME+unix://%2Frun%2Fapp.sock/path` also works). SCHEME is `uwsgi`
    /// (default port 3031), `fastcgi` (9000) or `scgi` (4000).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Request header (repeatable), e.g. -H 'Accept: text/html'.
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// Request method (default GET, or POST with --data).
    #[arg(short = 'X', long, value_name = "M")]
    pub method: Option<String>,
    /// Request body, or @FILE to send a file's contents.
    #[arg(short = 'd', long, value_name = "BODY|@FILE")]
    pub data: Option<String>,
    /// Seconds the whole exchange may take: connecting, sending the request and
    /// reading the whole response. Past it the request stops with exit code 7 (what
    /// came of the response is printed).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = seconds_arg)]
    pub timeout: f64,
    /// FastCGI only: send no CONTENT_LENGTH and stream the body in 8 KiB STDIN records,
    /// as nginx does with `fastcgi_request_buffering off` and a chunked upload.
    #[arg(long)]
    pub no_content_length: bool,
    /// Exit 22 for a 4xx answer too, not only for 500 and above (curl's --fail): for a
    /// health check that must fail when the app refuses the request (a 400 for a host
    /// it does not serve, a 404 for a path it lacks).
    #[arg(short = 'f', long)]
    pub fail: bool,
    /// FastCGI only: ask FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS with an
    /// FCGI_GET_VALUES record and print the answer as NAME=VALUE lines (the URL's path
    /// is not used).
    #[arg(long, conflicts_with_all = ["data", "method", "no_content_length"])]
    pub get_values: bool,
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &RequestArgs) -> Result<i32, ClientError> {
    let url = parse_url(&args.url, is_socket_file).map_err(|e| match e {
        UrlError::Bad(m) => ClientError::Usage(m),
        e @ UrlError::NoSocket(_) => ClientError::NoSocket(e.to_string()),
    })?;
    if args.no_content_length && url.scheme != Scheme::FastCgi {
        return Err(ClientError::Usage(format!(
            "--no-content-length is for fastcgi URLs only ({} needs the body length up front)",
            url.scheme.name()
        )));
    }
    if args.get_values && url.scheme != Scheme::FastCgi {
        return Err(ClientError::Usage(
            "--get-values is for fastcgi URLs only (FCGI_GET_VALUES is a FastCGI record)".into(),
        ));
    }
    let label = url.target.label();
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let deadline = Instant::now() + timeout;
    let connect = || {
        url.target
            .resolve()
            .and_then(|endpoint| endpoint.connect(timeout))
            .map(|conn| Deadline { conn, deadline })
            .map_err(|source| ClientError::Connect {
                target: label.clone(),
                source,
            })
    };

    if args.get_values {
        let mut stream = connect()?;
        return fastcgi::get_values(&mut stream, &mut io::stdout().lock(), &label);
    }

    // Build the whole request before connecting, so that usage errors never connect.
    let body = read_body(args)?;
    let writes = Request::from_args(args, &body)
        .encode(&url)
        .map_err(ClientError::Usage)?;

    let mut stream = connect()?;
    let io_err = |source| ClientError::Io {
        target: label.clone(),
        source,
    };
    for buf in &writes {
        stream.write_all(buf).map_err(io_err)?;
    }
    stream.flush().map_err(io_err)?;

    // A terminal gets the body with its control characters escaped; a pipe or a file
    // (a health check, `> page.html`) gets its bytes as they are.
    let terminal = io::stdout().is_terminal();
    let mut out = io::stdout().lock();
    let printer = |answer, out| {
        Printer::new(answer, out, &label)
            .escape_body(terminal)
            .fail_on_4xx(args.fail)
    };
    match url.scheme {
        Scheme::Uwsgi => print_to_eof(&mut stream, printer(Answer::Http, &mut out)),
        Scheme::FastCgi => {
            let mut printer = printer(Answer::FastCgi, &mut out);
            let mut stderr = fastcgi::StderrLines::default();
            fastcgi::read_response(&mut stream, &mut Vec::new(), &mut printer, &mut stderr)
                .map_err(|e| e.at(&label))?;
            // Not waiting for EOF: END_REQUEST ends the exchange (keep_conn is off, so
            // the server closes its side anyway).
            drop(stream);
            printer.finish()
        }
        Scheme::Scgi => print_to_eof(&mut stream, printer(Answer::Cgi, &mut out)),
    }
}

/// A connection whose reads and writes all end by one deadline: `--timeout` bounds the
/// whole exchange, not each wait (a server that sends a byte every few seconds, or an
/// endless body, would otherwise hold a health check forever). Before each call the
/// socket's timeouts are set to the time left.
struct Deadline {
    conn: Conn,
    deadline: Instant,
}

impl Deadline {
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.conn.set_timeout(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.conn.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.conn.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// Prints the answer as it comes, up to EOF (uwsgi, SCGI: the server closes after it).
fn print_to_eof(stream: &mut impl Read, mut printer: Printer<'_>) -> Result<i32, ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return printer.finish(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ClientError::Io {
                    target: printer.label().to_owned(),
                    source,
                })
            }
        };
        printer.feed(&buf[..n])?;
    }
}

/// The `--data` argument: the text itself, or the contents of `@FILE`.
fn read_body(args: &RequestArgs) -> Result<Vec<u8>, ClientError> {
    Ok(match &args.data {
        None => Vec::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(file)
                .map_err(|e| ClientError::Usage(format!("cannot read --data @{file}: {e}")))?,
            None => d.clone().into_bytes(),
        },
    })
}

/// Appends `bytes` with the characters a terminal would act on written as `\xHH`: C0
/// controls but tab and line feed (a carriage return too, unless a line feed follows),
/// DEL, and the C1 controls in UTF-8 (`\xC2\x9B` is CSI to some terminals). Printable
/// text, UTF-8 included, is kept.
pub fn escape_controls(bytes: &[u8], out: &mut Vec<u8>) {
    let hex = |out: &mut Vec<u8>, b: u8| {
        let _ = write!(out, "\\x{b:02X}");
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\t' | b'\n' => out.push(b),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => out.push(b),
            0..=0x1f | 0x7f => hex(out, b),
            0xc2 if bytes.get(i + 1).is_some_and(|c| (0x80..=0x9f).contains(c)) => {
                hex(out, b);
                hex(out, bytes[i + 1]);
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
}

/// Writes one line to our stderr; a stderr that is gone (a closed pipe) drops it, as
/// the lines are informational (`eprintln!` would panic and exit 101).
// regression (probe 347 LOW): `postern request ... 2>&1 >/dev/null | head -c 100`
// against a server flooding FCGI_STDERR ended in a panic.
pub(crate) fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// [`escape_controls`] for a line of text.
pub fn escaped_text(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    escape_controls(bytes, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a byte string of FastCGI records into (type, id, content).
#[cfg(test)]
fn records(mut bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
    use crate::proto::fastcgi as fcgi;
    let mut out = Vec::new();
    while let Some((n, r)) = fcgi::parse_record(bytes).unwrap() {
        out.push((r.kind, r.request_id, r.content.to_vec()));
        bytes = &bytes[n..];
    }
    assert!(bytes.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_on_the_command_line_are_finite() {
        for bad in ["inf", "nan", "-1", "4294967296", "1e300", "x"] {
            assert!(seconds_arg(bad).is_err(), "{bad}");
        }
        for (good, v) in [
            ("0", 0.0),
            ("0.5", 0.5),
            ("30", 30.0),
            ("30s", 30.0),
            ("500ms", 0.5),
            ("2m", 120.0),
        ] {
            assert_eq!(seconds_arg(good), Ok(v));
        }
        // Each one a Duration can hold.
        assert!(Duration::try_from_secs_f64(4_294_967_295.9).is_ok());
    }

    // See: sec's audit: `--timeout 8` bounded each read, so a server sending a byte a
    // second (or an endless body) held `postern request` forever.
    #[test]
    fn the_timeout_bounds_the_whole_exchange() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let _ = c.read(&mut [0; 4096]);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nX: ");
            // A byte every 50 ms for 5 s (a client without a deadline fails, not hangs).
            for _ in 0..100 {
                if c.write_all(b"a").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let args = RequestArgs {
            url: format!("uwsgi://127.0.0.1:{port}/"),
            headers: Vec::new(),
            method: None,
            data: None,
            timeout: 0.5,
            no_content_length: false,
            fail: false,
            get_values: false,
        };
        let started = Instant::now();
        let err = run(&args).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(err.exit_code(), EXIT_CONNECT);
    }
}
