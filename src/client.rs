//! `postern request`: sends one request the way nginx's `uwsgi_pass`, `fastcgi_pass` or
//! `scgi_pass` would and prints the response `curl -i` style. Blocking std I/O: it is a
//! debugging and health-check tool, one request per run.
//!
//! - `uwsgi://…`: one uwsgi packet plus the body; the answer (an HTTP status line and
//!   headers) is printed as it comes, up to EOF.
//! - `fastcgi://…`: BEGIN_REQUEST, PARAMS and STDIN records (PROTOCOLS.md §2.5); the
//!   STDOUT records up to END_REQUEST are the CGI response, STDERR goes to our stderr.
//!   `--no-content-length` streams the body with no CONTENT_LENGTH; `--get-values`
//!   sends an FCGI_GET_VALUES management record instead of a request (§2.7).
//! - `scgi://…`: one netstring head plus the body (§3); the CGI response runs to EOF.
//!
//! CGI responses (FastCGI, SCGI) are printed as HTTP: the `Status:` header (or 200, or
//! 302 with `Location`) becomes an `HTTP/1.1` status line. Exit codes: 0, 22 for a 5xx
//! answer, 7 when the server cannot be reached or answers badly, 2 for usage errors.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::RequestArgs;
use crate::proto::{cgi, fastcgi as fcgi, scgi, uwsgi};

/// Exit code for a connection failure (curl's "couldn't connect"), also used for an
/// answer cut short or not in the protocol spoken.
pub const EXIT_CONNECT: i32 = 7;
/// Exit code for a 5xx answer (curl --fail's code).
pub const EXIT_5XX: i32 = 22;
/// Exit code for a malformed URL or option.
pub const EXIT_USAGE: i32 = 2;

/// The request id of the one FastCGI request we send (nginx and Apache always use 1).
const FCGI_REQUEST_ID: u16 = 1;
/// STDIN record size with `--no-content-length`: small enough that even a modest body
/// takes several records, so the server's streaming path is exercised.
const STREAMED_STDIN_RECORD: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("talking to {target}: {source}")]
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

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            _ => EXIT_CONNECT,
        }
    }
}

/// The protocol named by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Uwsgi,
    FastCgi,
    Scgi,
}

impl Scheme {
    const ALL: [Scheme; 3] = [Scheme::Uwsgi, Scheme::FastCgi, Scheme::Scgi];

    /// The URL scheme (`fastcgi` in `fastcgi://` and `fastcgi+unix://`).
    fn name(self) -> &'static str {
        match self {
            Scheme::Uwsgi => "uwsgi",
            Scheme::FastCgi => "fastcgi",
            Scheme::Scgi => "scgi",
        }
    }

    /// The port when the URL names none (uWSGI's, PHP-FPM's and the SCGI spec's habits).
    fn default_port(self) -> u16 {
        match self {
            Scheme::Uwsgi => 3031,
            Scheme::FastCgi => 9000,
            Scheme::Scgi => 4000,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

#[derive(Debug, PartialEq, Eq)]
struct Url {
    scheme: Scheme,
    target: Target,
    /// Path and query as sent (`/a%20b?x=1`).
    uri: String,
}

/// Parses `SCHEME://HOST[:PORT]/p?q` and `SCHEME+unix:///sock/path/p?q` (or a
/// percent-encoded socket path as the host: `SCHEME+unix://%2Frun%2Fa.sock/p`), with
/// SCHEME one of `uwsgi`, `fastcgi`, `scgi`.
fn parse_url(url: &str, is_socket: impl Fn(&str) -> bool) -> Result<Url, String> {
    let usage = || {
        format!(
            "{url:?}: expected SCHEME://HOST[:PORT]/path or SCHEME+unix:///path/to.sock/path, \
             SCHEME being uwsgi, fastcgi or scgi"
        )
    };
    let (scheme_part, rest) = url.split_once("://").ok_or_else(usage)?;
    let scheme_part = scheme_part.to_ascii_lowercase();
    let (name, unix) = match scheme_part.strip_suffix("+unix") {
        Some(name) => (name, true),
        None => (scheme_part.as_str(), false),
    };
    let scheme = Scheme::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(usage)?;
    let (target, uri) = if unix {
        parse_unix(rest, is_socket)?
    } else {
        parse_tcp(rest, scheme.default_port())?
    };
    Ok(Url {
        scheme,
        target,
        uri,
    })
}

/// Splits `authority/path?q` (or `authority?q`) at the first `/` or `?`; the URI always
/// starts with `/`.
fn split_authority(rest: &str) -> (&str, String) {
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    }
}

/// `HOST[:PORT]/path?q` of a TCP URL; `[v6]` hosts are unbracketed.
fn parse_tcp(rest: &str, default_port: u16) -> Result<(Target, String), String> {
    let (authority, uri) = split_authority(rest);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h.to_owned(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), ""),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse().map_err(|_| format!("bad port {port:?}"))?
    };
    Ok((Target::Tcp { host, port }, uri))
}

/// What follows `SCHEME+unix://`: `/sock/path/p?q`, where the socket is the longest
/// leading run of path segments that is a socket file, or `%2Fsock%2Fpath/p?q`.
fn parse_unix(rest: &str, is_socket: impl Fn(&str) -> bool) -> Result<(Target, String), String> {
    if !rest.starts_with('/') {
        // Percent-encoded socket path as the authority.
        let (auth, uri) = split_authority(rest);
        let path = String::from_utf8_lossy(&cgi::percent_decode(auth.as_bytes())).into_owned();
        return Ok((Target::Unix(path.into()), uri));
    }
    let (path_part, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let segments: Vec<&str> = path_part.split('/').collect();
    for end in (2..=segments.len()).rev() {
        let candidate = segments[..end].join("/");
        if is_socket(&candidate) {
            let tail = segments[end..].join("/");
            return Ok((Target::Unix(candidate.into()), format!("/{tail}{query}")));
        }
    }
    Err(format!("no Unix socket found along {path_part}"))
}

fn is_socket_file(p: &str) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &RequestArgs) -> Result<i32, ClientError> {
    let url = parse_url(&args.url, is_socket_file).map_err(ClientError::Usage)?;
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
    let label = match &url.target {
        Target::Tcp { host, port } => format!("{host}:{port}"),
        Target::Unix(p) => format!("unix:{}", p.display()),
    };
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));

    if args.get_values {
        let mut stream = connect(&url.target, timeout, &label)?;
        return get_values(&mut *stream, &mut io::stdout().lock(), &label);
    }

    // Build the whole request before connecting, so that usage errors never connect.
    let body = read_body(args)?;
    let vars = cgi_vars(args, &url, &body)?;
    let pairs: Vec<(&[u8], &[u8])> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    // Each buffer is written with its own write_all (several only for a streamed body).
    let writes: Vec<Vec<u8>> = match url.scheme {
        Scheme::Uwsgi => {
            let mut packet = Vec::new();
            uwsgi::encode_packet(0, 0, &pairs, &mut packet).map_err(|e| {
                ClientError::Usage(format!("the request is too big for uwsgi: {e}"))
            })?;
            packet.extend_from_slice(&body);
            vec![packet]
        }
        Scheme::FastCgi => fastcgi_request(&pairs, &body, args.no_content_length),
        Scheme::Scgi => {
            let mut packet = Vec::new();
            scgi::encode_head(&pairs, body.len() as u64, &mut packet);
            packet.extend_from_slice(&body);
            vec![packet]
        }
    };

    let mut stream = connect(&url.target, timeout, &label)?;
    let io_err = |source| ClientError::Io {
        target: label.clone(),
        source,
    };
    for buf in &writes {
        stream.write_all(buf).map_err(io_err)?;
    }
    stream.flush().map_err(io_err)?;

    match url.scheme {
        Scheme::Uwsgi => {
            let response = read_to_eof(&mut *stream, &label)?;
            write_stdout(&response)?;
            Ok(match response_status(&response) {
                Some(s) if s >= 500 => EXIT_5XX,
                Some(_) => 0,
                None => {
                    eprintln!("postern request: the response has no HTTP status line");
                    EXIT_CONNECT
                }
            })
        }
        Scheme::FastCgi => {
            let response = read_fastcgi_response(&mut *stream, &label)?;
            // Not waiting for EOF: END_REQUEST ends the exchange (keep_conn is off, so
            // the server closes its side anyway).
            drop(stream);
            if response.starts_with(b"HTTP/") {
                eprintln!(
                    "postern request: warning: the FastCGI response starts with an HTTP \
                     status line; nginx skips it and sends 200 unless a Status header follows"
                );
            }
            print_cgi_response(&response, &label)
        }
        Scheme::Scgi => {
            let response = read_to_eof(&mut *stream, &label)?;
            print_cgi_response(&response, &label)
        }
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

/// One CGI variable: name and value bytes.
type Var = (Vec<u8>, Vec<u8>);

/// The CGI variables of the request, as nginx's stock `uwsgi_params`, `fastcgi_params`
/// and `scgi_params` send them, plus the `-H` headers as `HTTP_*`.
///
/// All schemes get PATH_INFO (the decoded path). FastCGI also gets `SCRIPT_NAME=""`, the
/// setting PROTOCOLS.md §2.13 asks admins for, so no mount is needed on the server.
/// CONTENT_LENGTH is left out with `--no-content-length`; for SCGI, `scgi::encode_head`
/// replaces it with its own, first, and adds `SCGI=1`.
fn cgi_vars(args: &RequestArgs, url: &Url, body: &[u8]) -> Result<Vec<Var>, ClientError> {
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| {
            if args.data.is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        })
        .to_ascii_uppercase();
    let (path, query) = match url.uri.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (url.uri.clone(), String::new()),
    };
    let (server_name, server_port) = match &url.target {
        Target::Tcp { host, port } => (host.clone(), port.to_string()),
        Target::Unix(_) => ("localhost".to_owned(), "80".to_owned()),
    };

    let mut vars: Vec<Var> = vec![
        (b"QUERY_STRING".to_vec(), query.into_bytes()),
        (b"REQUEST_METHOD".to_vec(), method.into_bytes()),
        (b"REQUEST_URI".to_vec(), url.uri.clone().into_bytes()),
    ];
    if url.scheme == Scheme::FastCgi {
        vars.push((b"SCRIPT_NAME".to_vec(), Vec::new()));
    }
    vars.extend([
        (b"PATH_INFO".to_vec(), cgi::percent_decode(path.as_bytes())),
        (b"SERVER_PROTOCOL".to_vec(), b"HTTP/1.1".to_vec()),
        (b"REQUEST_SCHEME".to_vec(), b"http".to_vec()),
        (b"REMOTE_ADDR".to_vec(), b"127.0.0.1".to_vec()),
        (b"REMOTE_PORT".to_vec(), b"0".to_vec()),
        (b"SERVER_NAME".to_vec(), server_name.clone().into_bytes()),
        (b"SERVER_PORT".to_vec(), server_port.into_bytes()),
    ]);
    if (!body.is_empty() || args.data.is_some()) && !args.no_content_length {
        vars.push((
            b"CONTENT_LENGTH".to_vec(),
            body.len().to_string().into_bytes(),
        ));
    }
    let mut has_host = false;
    let mut has_type = false;
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| ClientError::Usage(format!("header {h:?} is not 'Name: value'")))?;
        let name = k.trim().to_ascii_uppercase().replace('-', "_");
        let value = v.trim().as_bytes().to_vec();
        if name.is_empty() || value.contains(&0) {
            // SCGI separates names and values with NUL; no front end sends either.
            return Err(ClientError::Usage(format!("header {h:?} cannot be sent")));
        }
        if name == "CONTENT_TYPE" {
            vars.push((b"CONTENT_TYPE".to_vec(), value.clone()));
            has_type = true;
        }
        has_host |= name == "HOST";
        vars.push((format!("HTTP_{name}").into_bytes(), value));
    }
    if !has_type && args.data.is_some() {
        vars.push((
            b"CONTENT_TYPE".to_vec(),
            b"application/x-www-form-urlencoded".to_vec(),
        ));
    }
    if !has_host {
        vars.push((b"HTTP_HOST".to_vec(), server_name.into_bytes()));
    }
    Ok(vars)
}

/// The FastCGI request (PROTOCOLS.md §2.5): BEGIN_REQUEST (id 1, RESPONDER, no
/// keep-conn), the PARAMS stream (records of at most 65535 bytes, then an empty one) and
/// the STDIN stream (likewise, then an empty one, sent even without a body).
///
/// `streamed` (`--no-content-length`): the body goes in [`STREAMED_STDIN_RECORD`]-byte
/// records, each in its own buffer so that it is written on its own, the way nginx
/// forwards a chunked upload with `fastcgi_request_buffering off`.
fn fastcgi_request(pairs: &[(&[u8], &[u8])], body: &[u8], streamed: bool) -> Vec<Vec<u8>> {
    let mut params = Vec::new();
    fcgi::encode_pairs(pairs, &mut params);
    let mut head = Vec::new();
    fcgi::encode_begin_request(&mut head, FCGI_REQUEST_ID, fcgi::ROLE_RESPONDER, false);
    fcgi::encode_stream(&mut head, fcgi::PARAMS, FCGI_REQUEST_ID, &params);
    fcgi::encode_record(&mut head, fcgi::PARAMS, FCGI_REQUEST_ID, &[]);
    if !streamed {
        fcgi::encode_stream(&mut head, fcgi::STDIN, FCGI_REQUEST_ID, body);
        fcgi::encode_record(&mut head, fcgi::STDIN, FCGI_REQUEST_ID, &[]);
        return vec![head];
    }
    let mut writes = vec![head];
    for chunk in body.chunks(STREAMED_STDIN_RECORD) {
        let mut record = Vec::new();
        fcgi::encode_record(&mut record, fcgi::STDIN, FCGI_REQUEST_ID, chunk);
        writes.push(record);
    }
    let mut end = Vec::new();
    fcgi::encode_record(&mut end, fcgi::STDIN, FCGI_REQUEST_ID, &[]);
    writes.push(end);
    writes
}

/// Connects with `timeout` (TCP only; a Unix connect does not block for long) and sets
/// it as the read and write timeout.
fn connect(
    target: &Target,
    timeout: Duration,
    label: &str,
) -> Result<Box<dyn Stream>, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: label.to_owned(),
        source,
    };
    Ok(match target {
        Target::Tcp { host, port } => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(connect_err)?
                .next()
                .ok_or_else(|| connect_err(io::Error::other("the host resolves to no address")))?;
            let s = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
            s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
            s.set_write_timeout(Some(timeout)).map_err(connect_err)?;
            Box::new(s)
        }
        Target::Unix(p) => {
            let s = UnixStream::connect(p).map_err(connect_err)?;
            s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
            s.set_write_timeout(Some(timeout)).map_err(connect_err)?;
            Box::new(s)
        }
    })
}

/// Reads the whole answer (uwsgi, SCGI: the server closes after it); nothing at all is
/// an error.
fn read_to_eof(stream: &mut dyn Stream, label: &str) -> Result<Vec<u8>, ClientError> {
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|source| ClientError::Io {
            target: label.to_owned(),
            source,
        })?;
    if response.is_empty() {
        return Err(ClientError::Io {
            target: label.to_owned(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            ),
        });
    }
    Ok(response)
}

/// Prints the response (or the GET_VALUES answer) as raw bytes.
fn write_stdout(bytes: &[u8]) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// Prints a CGI response (FastCGI STDOUT, SCGI) as HTTP and picks the exit code.
fn print_cgi_response(response: &[u8], label: &str) -> Result<i32, ClientError> {
    let (status, http) = cgi_to_http(response).map_err(|reason| ClientError::Protocol {
        target: label.to_owned(),
        reason,
    })?;
    write_stdout(&http)?;
    Ok(if status >= 500 { EXIT_5XX } else { 0 })
}

/// Status code from `HTTP/1.x NNN …` or a CGI `Status: NNN` header.
fn response_status(resp: &[u8]) -> Option<u16> {
    let first = resp.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(first);
    let code = if line.starts_with("HTTP/") {
        line.split_whitespace().nth(1)?
    } else {
        line.strip_prefix("Status:")?.split_whitespace().next()?
    };
    code.parse().ok()
}

/// Turns a CGI response (RFC 3875 §6: header lines, an empty line, the body) into the
/// HTTP/1.1 response nginx would send: the `Status` header becomes the status line
/// (missing: 302 with `Location`, else 200), the other headers follow in order with CRLF
/// endings, then the body untouched. Returns the status code too.
///
/// A response that already starts with an HTTP status line (accepted by nginx over SCGI)
/// is returned as it is.
fn cgi_to_http(resp: &[u8]) -> Result<(u16, Vec<u8>), String> {
    if resp.starts_with(b"HTTP/") {
        let status = response_status(resp).ok_or("the HTTP status line has no status code")?;
        return Ok((status, resp.to_vec()));
    }
    // Header lines up to the first empty one; CGI allows LF as well as CRLF.
    let mut headers: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = resp[pos..].iter().position(|&b| b == b'\n') else {
            return Err(if resp.is_empty() {
                "the response is empty (no CGI header block)".into()
            } else {
                "the CGI header block does not end (no empty line after the headers)".into()
            });
        };
        let line = &resp[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    let body = &resp[pos..];

    let mut status: Option<(u16, Vec<u8>)> = None;
    let mut has_location = false;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(headers.len());
    for line in headers {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "CGI header line {:?} has no ':'",
                String::from_utf8_lossy(line)
            ));
        };
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(format!(
                "bad CGI header name in {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"Status") {
            if status.is_some() {
                return Err("the CGI response has two Status headers".into());
            }
            status = Some(parse_cgi_status(value)?);
            continue;
        }
        has_location |= name.eq_ignore_ascii_case(b"Location");
        kept.push(line);
    }
    let (code, reason) = status.unwrap_or_else(|| {
        let code = if has_location { 302 } else { 200 };
        (code, reason_phrase(code).as_bytes().to_vec())
    });

    let mut out = Vec::with_capacity(resp.len() + 16);
    out.extend_from_slice(format!("HTTP/1.1 {code} ").as_bytes());
    out.extend_from_slice(&reason);
    out.extend_from_slice(b"\r\n");
    for line in kept {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok((code, out))
}

/// A `Status` value: three digits (100–999), then an optional reason phrase; without
/// one, the standard phrase for the code is used.
fn parse_cgi_status(value: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let bad = || format!("bad Status header {:?}", String::from_utf8_lossy(value));
    let digits = value.get(..3).ok_or_else(bad)?;
    if !digits.iter().all(u8::is_ascii_digit) || value.get(3).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if code < 100 {
        return Err(bad());
    }
    let reason = value[3..].trim_ascii();
    let reason = if reason.is_empty() {
        reason_phrase(code).as_bytes().to_vec()
    } else {
        reason.to_vec()
    };
    Ok((code, reason))
}

/// The usual reason phrase of the common status codes ("" for the others).
fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// One FastCGI record read from the server, content copied out, padding skipped.
struct Record {
    kind: u8,
    request_id: u16,
    content: Vec<u8>,
}

/// Reads the next record. `buf` holds bytes read but not yet consumed, between calls.
/// `Ok(None)`: the server closed the connection between records. The version byte is
/// checked by [`fcgi::parse_record`] (anything but 1 is an error).
fn read_record(
    stream: &mut dyn Stream,
    buf: &mut Vec<u8>,
    label: &str,
) -> Result<Option<Record>, ClientError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match fcgi::parse_record(buf) {
            Ok(Some((len, r))) => {
                let record = Record {
                    kind: r.kind,
                    request_id: r.request_id,
                    content: r.content.to_vec(),
                };
                buf.drain(..len);
                return Ok(Some(record));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(ClientError::Protocol {
                    target: label.to_owned(),
                    reason: format!("not a FastCGI record: {e}"),
                })
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ClientError::Io {
                    target: label.to_owned(),
                    source,
                })
            }
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ClientError::Cut {
                target: label.to_owned(),
                reason: format!(
                    "the connection closed in the middle of a FastCGI record ({} bytes of it received)",
                    buf.len()
                ),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Name of a FastCGI record type, for messages.
fn record_name(kind: u8) -> String {
    let name = match kind {
        fcgi::BEGIN_REQUEST => "FCGI_BEGIN_REQUEST",
        fcgi::ABORT_REQUEST => "FCGI_ABORT_REQUEST",
        fcgi::END_REQUEST => "FCGI_END_REQUEST",
        fcgi::PARAMS => "FCGI_PARAMS",
        fcgi::STDIN => "FCGI_STDIN",
        fcgi::STDOUT => "FCGI_STDOUT",
        fcgi::STDERR => "FCGI_STDERR",
        fcgi::DATA => "FCGI_DATA",
        fcgi::GET_VALUES => "FCGI_GET_VALUES",
        fcgi::GET_VALUES_RESULT => "FCGI_GET_VALUES_RESULT",
        fcgi::UNKNOWN_TYPE => "FCGI_UNKNOWN_TYPE",
        _ => return format!("record type {kind}"),
    };
    name.to_owned()
}

/// FCGI_STDERR content, printed to our stderr line by line as it arrives, each line
/// prefixed `fastcgi stderr: `. A last line without a newline is printed on drop, so
/// that it shows even when the response fails.
#[derive(Default)]
struct StderrLines {
    pending: Vec<u8>,
}

impl StderrLines {
    fn push(&mut self, content: &[u8]) {
        self.pending.extend_from_slice(content);
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            Self::print(&line[..nl]);
        }
    }

    fn print(line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        eprintln!("fastcgi stderr: {}", String::from_utf8_lossy(line));
    }
}

impl Drop for StderrLines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            Self::print(&std::mem::take(&mut self.pending));
        }
    }
}

/// Reads records until FCGI_END_REQUEST and returns the STDOUT stream: the CGI response.
///
/// Like nginx (PROTOCOLS.md §2.11), only STDOUT, STDERR and END_REQUEST records for
/// request id 1 are accepted. The connection closing before END_REQUEST means the
/// response was cut, even after the empty STDOUT record.
fn read_fastcgi_response(stream: &mut dyn Stream, label: &str) -> Result<Vec<u8>, ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        target: label.to_owned(),
        reason,
    };
    let mut buf = Vec::new();
    let mut stdout = Vec::new();
    let mut stderr = StderrLines::default();
    let mut records = 0usize;
    loop {
        let Some(record) = read_record(stream, &mut buf, label)? else {
            let reason = if records == 0 {
                // Typical of a socket that speaks another protocol and gave up on ours.
                "the connection closed before any FastCGI record (is it a FastCGI socket?)"
                    .to_owned()
            } else {
                format!(
                    "the connection closed before FCGI_END_REQUEST ({} bytes of FCGI_STDOUT received)",
                    stdout.len()
                )
            };
            return Err(ClientError::Cut {
                target: label.to_owned(),
                reason,
            });
        };
        records += 1;
        if record.request_id != FCGI_REQUEST_ID {
            return Err(protocol(format!(
                "{} for request id {} (the request was id {FCGI_REQUEST_ID})",
                record_name(record.kind),
                record.request_id
            )));
        }
        match record.kind {
            fcgi::STDOUT => stdout.extend_from_slice(&record.content),
            fcgi::STDERR => stderr.push(&record.content),
            fcgi::END_REQUEST => {
                drop(stderr);
                check_end_request(&record.content).map_err(protocol)?;
                if stdout.is_empty() {
                    return Err(protocol(
                        "the request ended without a response (no FCGI_STDOUT content)".into(),
                    ));
                }
                return Ok(stdout);
            }
            other => return Err(protocol(format!("unexpected {}", record_name(other)))),
        }
    }
}

/// Checks an FCGI_END_REQUEST body (§2.6): `u32 appStatus | u8 protocolStatus | 3
/// reserved`. A protocolStatus other than REQUEST_COMPLETE is an error; a non-zero
/// appStatus is only reported.
fn check_end_request(content: &[u8]) -> Result<(), String> {
    let &[a0, a1, a2, a3, protocol_status, _, _, _] = content else {
        return Err(format!(
            "FCGI_END_REQUEST body of {} bytes (expected 8)",
            content.len()
        ));
    };
    let app_status = u32::from_be_bytes([a0, a1, a2, a3]);
    if app_status != 0 {
        eprintln!("postern request: FastCGI appStatus {app_status}");
    }
    match protocol_status {
        s if s == fcgi::ProtocolStatus::RequestComplete as u8 => Ok(()),
        s if s == fcgi::ProtocolStatus::CantMpxConn as u8 => {
            Err("the server refused the request: FCGI_CANT_MPX_CONN".into())
        }
        s if s == fcgi::ProtocolStatus::Overloaded as u8 => {
            Err("the server refused the request: FCGI_OVERLOADED".into())
        }
        s if s == fcgi::ProtocolStatus::UnknownRole as u8 => {
            Err("the server refused the request: FCGI_UNKNOWN_ROLE".into())
        }
        s => Err(format!("FCGI_END_REQUEST with unknown protocolStatus {s}")),
    }
}

/// `--get-values`: sends one FCGI_GET_VALUES record (id 0) asking the three standard
/// names (§2.7), prints the FCGI_GET_VALUES_RESULT pairs as `NAME=VALUE` lines, and
/// returns exit code 0. The server may keep the connection open after answering; the
/// caller closes it by dropping the stream.
fn get_values(
    stream: &mut dyn Stream,
    out: &mut dyn Write,
    label: &str,
) -> Result<i32, ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        target: label.to_owned(),
        reason,
    };
    let names: [&[u8]; 3] = [
        fcgi::FCGI_MAX_CONNS,
        fcgi::FCGI_MAX_REQS,
        fcgi::FCGI_MPXS_CONNS,
    ];
    let query: Vec<(&[u8], &[u8])> = names.iter().map(|&n| (n, &b""[..])).collect();
    let mut content = Vec::new();
    fcgi::encode_pairs(&query, &mut content);
    let mut record = Vec::new();
    fcgi::encode_record(&mut record, fcgi::GET_VALUES, 0, &content);
    stream
        .write_all(&record)
        .and_then(|()| stream.flush())
        .map_err(|source| ClientError::Io {
            target: label.to_owned(),
            source,
        })?;

    let mut buf = Vec::new();
    let Some(answer) = read_record(stream, &mut buf, label)? else {
        return Err(ClientError::Cut {
            target: label.to_owned(),
            reason: "the connection closed before FCGI_GET_VALUES_RESULT".into(),
        });
    };
    match (answer.kind, answer.request_id) {
        (fcgi::GET_VALUES_RESULT, 0) => {}
        (fcgi::UNKNOWN_TYPE, 0) => {
            return Err(protocol(
                "the server does not know FCGI_GET_VALUES (it answered FCGI_UNKNOWN_TYPE)".into(),
            ))
        }
        (kind, id) => {
            return Err(protocol(format!(
                "{} for request id {id} in answer to FCGI_GET_VALUES",
                record_name(kind)
            )))
        }
    }
    let pairs = fcgi::parse_pairs(&answer.content)
        .map_err(|e| protocol(format!("bad FCGI_GET_VALUES_RESULT: {e}")))?;
    let mut text = Vec::new();
    for (name, value) in &pairs {
        text.extend_from_slice(&answer.content[name.start as usize..name.end as usize]);
        text.push(b'=');
        text.extend_from_slice(&answer.content[value.start as usize..value.end as usize]);
        text.push(b'\n');
    }
    out.write_all(&text)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)?;
    for name in names {
        let answered = pairs
            .iter()
            .any(|(n, _)| &answer.content[n.start as usize..n.end as usize] == name);
        if !answered {
            eprintln!(
                "postern request: the server did not answer {}",
                String::from_utf8_lossy(name)
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_urls() {
        let u = parse_url("uwsgi://127.0.0.1:3031/hello?x=1", |_| false).unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 3031
            }
        );
        assert_eq!(u.uri, "/hello?x=1");
        let u = parse_url("uwsgi://[::1]:9/", |_| false).unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        let u = parse_url("uwsgi://localhost", |_| false).unwrap();
        assert_eq!(u.uri, "/");
        assert!(parse_url("http://x/", |_| false).is_err());
    }

    #[test]
    fn finds_the_socket_in_a_unix_url() {
        let u = parse_url("uwsgi+unix:///run/app.sock/a/b?q=1", |p| {
            p == "/run/app.sock"
        })
        .unwrap();
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert_eq!(u.uri, "/a/b?q=1");
        let u = parse_url("uwsgi+unix:///run/app.sock", |p| p == "/run/app.sock").unwrap();
        assert_eq!(u.uri, "/");
        let u = parse_url("uwsgi+unix://%2Frun%2Fapp.sock/x", |_| false).unwrap();
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert!(parse_url("uwsgi+unix:///nope/x", |_| false).is_err());
    }

    #[test]
    fn reads_status_codes() {
        assert_eq!(response_status(b"HTTP/1.1 503 Busy\r\n\r\n"), Some(503));
        assert_eq!(response_status(b"Status: 200 OK\r\n\r\n"), Some(200));
        assert_eq!(response_status(b"garbage"), None);
    }

    #[test]
    fn parses_fastcgi_and_scgi_tcp_urls_with_their_default_ports() {
        let u = parse_url("fastcgi://127.0.0.1/a%20b?x=1", |_| false).unwrap();
        assert_eq!(u.scheme, Scheme::FastCgi);
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
        assert_eq!(u.uri, "/a%20b?x=1");
        let u = parse_url("fastcgi://[::1]:9001?q", |_| false).unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "::1".into(),
                port: 9001
            }
        );
        assert_eq!(u.uri, "/?q");
        let u = parse_url("scgi://example.org", |_| false).unwrap();
        assert_eq!(u.scheme, Scheme::Scgi);
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "example.org".into(),
                port: 4000
            }
        );
        assert_eq!(u.uri, "/");
        let u = parse_url("SCGI://h:4001/p", |_| false).unwrap();
        assert_eq!(u.scheme, Scheme::Scgi);
        let u = parse_url("uwsgi://h/", |_| false).unwrap();
        assert_eq!(u.scheme, Scheme::Uwsgi);
        assert!(parse_url("fastcgi://:9000/", |_| false).is_err());
        assert!(parse_url("scgi://h:port/", |_| false).is_err());
        assert!(parse_url("fcgi://h/", |_| false).is_err());
        assert!(parse_url("scgi+tcp://h/", |_| false).is_err());
        assert!(parse_url("fastcgi:/h/", |_| false).is_err());
    }

    #[test]
    fn parses_fastcgi_and_scgi_unix_urls() {
        let is_sock = |p: &str| p == "/run/app.sock";
        let u = parse_url("fastcgi+unix:///run/app.sock/env/x?q=1", is_sock).unwrap();
        assert_eq!(u.scheme, Scheme::FastCgi);
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert_eq!(u.uri, "/env/x?q=1");
        let u = parse_url("fastcgi+unix://%2Fsock.sock/p", |_| false).unwrap();
        assert_eq!(u.target, Target::Unix("/sock.sock".into()));
        assert_eq!(u.uri, "/p");
        let u = parse_url("fastcgi+unix://%2Fsock.sock?x=1", |_| false).unwrap();
        assert_eq!(u.target, Target::Unix("/sock.sock".into()));
        assert_eq!(u.uri, "/?x=1");
        let u = parse_url("scgi+unix:///run/app.sock", is_sock).unwrap();
        assert_eq!(u.scheme, Scheme::Scgi);
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert_eq!(u.uri, "/");
        let u = parse_url("scgi+unix://%2Frun%2Fapp.sock/a", |_| false).unwrap();
        assert_eq!(u.target, Target::Unix("/run/app.sock".into()));
        assert!(parse_url("scgi+unix:///nope/x", is_sock).is_err());
    }

    #[test]
    fn converts_cgi_heads_to_http() {
        let (code, http) =
            cgi_to_http(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").unwrap();
        assert_eq!(code, 404);
        assert_eq!(
            http,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope"
        );
        // No Status: 200; the Status header may come anywhere; LF line ends become CRLF.
        let (code, http) = cgi_to_http(b"Content-Type: text/html\n\n<p>\r\n\r\n").unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            http,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>\r\n\r\n"
        );
        let (code, http) = cgi_to_http(b"X-A: 1\r\nstatus:503\r\nX-B: 2\r\n\r\n").unwrap();
        assert_eq!(code, 503);
        assert_eq!(
            http,
            b"HTTP/1.1 503 Service Unavailable\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        );
        // Location without Status: 302.
        let (code, http) = cgi_to_http(b"Location: /there\r\n\r\n").unwrap();
        assert_eq!(code, 302);
        assert_eq!(http, b"HTTP/1.1 302 Found\r\nLocation: /there\r\n\r\n");
        // Status wins over Location; an unknown code keeps an empty reason.
        let (code, http) = cgi_to_http(b"Status: 301\r\nLocation: /x\r\n\r\n").unwrap();
        assert_eq!(code, 301);
        assert!(http.starts_with(b"HTTP/1.1 301 Moved Permanently\r\n"));
        let (code, http) = cgi_to_http(b"Status: 599 Odd\r\n\r\n").unwrap();
        assert_eq!((code, &http[..]), (599, &b"HTTP/1.1 599 Odd\r\n\r\n"[..]));
        let (_, http) = cgi_to_http(b"Status: 299\r\n\r\n").unwrap();
        assert_eq!(http, b"HTTP/1.1 299 \r\n\r\n");
        // An HTTP status line (nginx accepts one over SCGI) is kept as it is.
        let (code, http) = cgi_to_http(b"HTTP/1.1 500 Oops\r\n\r\nx").unwrap();
        assert_eq!((code, &http[..]), (500, &b"HTTP/1.1 500 Oops\r\n\r\nx"[..]));
    }

    #[test]
    fn refuses_broken_cgi_heads() {
        assert!(cgi_to_http(b"").is_err());
        assert!(cgi_to_http(b"Content-Type: text/plain\r\n").is_err());
        assert!(cgi_to_http(b"no colon here\r\n\r\n").is_err());
        assert!(cgi_to_http(b"Bad Name: x\r\n\r\n").is_err());
        assert!(cgi_to_http(b"Status: abc\r\n\r\n").is_err());
        assert!(cgi_to_http(b"Status: 2000\r\n\r\n").is_err());
        assert!(cgi_to_http(b"Status: 099\r\n\r\n").is_err());
        assert!(cgi_to_http(b"Status: 200\r\nStatus: 500\r\n\r\n").is_err());
    }

    fn args(url: &str) -> RequestArgs {
        RequestArgs {
            url: url.into(),
            headers: vec!["X-Test: yes".into(), "Content-Type: text/plain".into()],
            method: None,
            data: Some("payload".into()),
            timeout: 1.0,
            no_content_length: false,
            get_values: false,
        }
    }

    fn var<'v>(vars: &'v [Var], name: &str) -> Option<&'v [u8]> {
        vars.iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| &v[..])
    }

    #[test]
    fn fastcgi_vars_set_an_empty_script_name_and_can_drop_content_length() {
        let mut a = args("fastcgi://h/a%20b?x=1");
        let url = parse_url(&a.url, |_| false).unwrap();
        let vars = cgi_vars(&a, &url, b"payload").unwrap();
        assert_eq!(var(&vars, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(var(&vars, "PATH_INFO"), Some(&b"/a b"[..]));
        assert_eq!(var(&vars, "QUERY_STRING"), Some(&b"x=1"[..]));
        assert_eq!(var(&vars, "REQUEST_METHOD"), Some(&b"POST"[..]));
        assert_eq!(var(&vars, "CONTENT_LENGTH"), Some(&b"7"[..]));
        assert_eq!(var(&vars, "CONTENT_TYPE"), Some(&b"text/plain"[..]));
        assert_eq!(var(&vars, "HTTP_X_TEST"), Some(&b"yes"[..]));
        assert_eq!(var(&vars, "SERVER_PORT"), Some(&b"9000"[..]));
        a.no_content_length = true;
        let vars = cgi_vars(&a, &url, b"payload").unwrap();
        assert_eq!(var(&vars, "CONTENT_LENGTH"), None);
        // uwsgi keeps its variables: no SCRIPT_NAME.
        let a = args("uwsgi://h/");
        let url = parse_url(&a.url, |_| false).unwrap();
        assert_eq!(
            var(&cgi_vars(&a, &url, b"payload").unwrap(), "SCRIPT_NAME"),
            None
        );
    }

    /// Splits a byte string of FastCGI records into (type, id, content).
    fn records(mut bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((n, r)) = fcgi::parse_record(bytes).unwrap() {
            out.push((r.kind, r.request_id, r.content.to_vec()));
            bytes = &bytes[n..];
        }
        assert!(bytes.is_empty());
        out
    }

    #[test]
    fn frames_a_fastcgi_request() {
        let pairs: [(&[u8], &[u8]); 1] = [(b"REQUEST_METHOD", b"POST")];
        let body = vec![7u8; 70_000];
        let writes = fastcgi_request(&pairs, &body, false);
        assert_eq!(writes.len(), 1);
        let recs = records(&writes[0]);
        let kinds: Vec<(u8, u16, usize)> =
            recs.iter().map(|(k, id, c)| (*k, *id, c.len())).collect();
        assert_eq!(
            kinds,
            [
                (fcgi::BEGIN_REQUEST, 1, 8),
                (fcgi::PARAMS, 1, 20),
                (fcgi::PARAMS, 1, 0),
                (fcgi::STDIN, 1, 65535),
                (fcgi::STDIN, 1, 70_000 - 65535),
                (fcgi::STDIN, 1, 0),
            ]
        );
        assert_eq!(
            fcgi::parse_begin(&recs[0].2).unwrap(),
            fcgi::BeginRequest {
                role: fcgi::ROLE_RESPONDER,
                keep_conn: false
            }
        );

        // Streamed: one write per 8 KiB STDIN record, then the empty one.
        let writes = fastcgi_request(&pairs, &body[..20_000], true);
        assert_eq!(writes.len(), 1 + 3 + 1);
        let sizes: Vec<usize> = writes[1..]
            .iter()
            .flat_map(|w| records(w))
            .map(|(k, _, c)| {
                assert_eq!(k, fcgi::STDIN);
                c.len()
            })
            .collect();
        assert_eq!(sizes, [8192, 8192, 20_000 - 16_384, 0]);
        // No body: still the empty STDIN record.
        let recs = records(&fastcgi_request(&pairs, b"", false)[0]);
        assert_eq!(recs.last().unwrap().0, fcgi::STDIN);
        assert_eq!(recs.iter().filter(|r| r.0 == fcgi::STDIN).count(), 1);
    }

    /// A fake server: what it "sent" is read back, what we write is kept.
    struct Fake {
        input: io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // At most 5 bytes at a time, to exercise reassembly.
            let n = buf.len().min(5);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn fake(input: Vec<u8>) -> Fake {
        Fake {
            input: io::Cursor::new(input),
            written: Vec::new(),
        }
    }

    #[test]
    fn reads_a_fastcgi_response() {
        let mut answer = Vec::new();
        fcgi::encode_stream(&mut answer, fcgi::STDOUT, 1, b"Status: 200 OK\r\n\r\n");
        fcgi::encode_stream(&mut answer, fcgi::STDERR, 1, b"warned\n");
        fcgi::encode_stream(&mut answer, fcgi::STDOUT, 1, b"body");
        fcgi::encode_record(&mut answer, fcgi::STDOUT, 1, &[]);
        let complete = answer.len();
        fcgi::encode_end_request(&mut answer, 1, 0, fcgi::ProtocolStatus::RequestComplete);
        let got = read_fastcgi_response(&mut fake(answer.clone()), "t").unwrap();
        assert_eq!(got, b"Status: 200 OK\r\n\r\nbody");

        // Closed before END_REQUEST, at a record boundary or inside one: cut.
        let err = read_fastcgi_response(&mut fake(answer[..complete].to_vec()), "t").unwrap_err();
        assert!(matches!(err, ClientError::Cut { .. }), "{err}");
        assert!(err.to_string().contains("was cut"), "{err}");
        let err =
            read_fastcgi_response(&mut fake(answer[..complete + 3].to_vec()), "t").unwrap_err();
        assert!(matches!(err, ClientError::Cut { .. }), "{err}");
        assert_eq!(err.exit_code(), EXIT_CONNECT);

        // Wrong request id, wrong version, refused request.
        let mut other = Vec::new();
        fcgi::encode_stream(&mut other, fcgi::STDOUT, 2, b"x");
        let err = read_fastcgi_response(&mut fake(other), "t").unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        let mut v2 = answer.clone();
        v2[0] = 2;
        let err = read_fastcgi_response(&mut fake(v2), "t").unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        let mut refused = Vec::new();
        fcgi::encode_end_request(&mut refused, 1, 0, fcgi::ProtocolStatus::Overloaded);
        let err = read_fastcgi_response(&mut fake(refused), "t").unwrap_err();
        assert!(err.to_string().contains("FCGI_OVERLOADED"), "{err}");
    }

    #[test]
    fn asks_and_prints_get_values() {
        let mut answer = Vec::new();
        let values = fcgi::Values {
            max_conns: 10,
            max_reqs: 20,
            mpxs_conns: false,
        };
        let mut query = Vec::new();
        fcgi::encode_pairs(
            &[
                (fcgi::FCGI_MAX_CONNS, b""),
                (fcgi::FCGI_MAX_REQS, b""),
                (fcgi::FCGI_MPXS_CONNS, b""),
            ],
            &mut query,
        );
        fcgi::encode_get_values_result(&mut answer, &query, &values);
        let mut server = fake(answer);
        let mut printed = Vec::new();
        assert_eq!(get_values(&mut server, &mut printed, "t").unwrap(), 0);
        assert_eq!(
            String::from_utf8(printed).unwrap(),
            "FCGI_MAX_CONNS=10\nFCGI_MAX_REQS=20\nFCGI_MPXS_CONNS=0\n"
        );
        let sent = records(&server.written);
        assert_eq!(sent, [(fcgi::GET_VALUES, 0, query)]);

        let mut unknown = Vec::new();
        fcgi::encode_unknown_type(&mut unknown, fcgi::GET_VALUES);
        let err = get_values(&mut fake(unknown), &mut Vec::new(), "t").unwrap_err();
        assert!(err.to_string().contains("FCGI_UNKNOWN_TYPE"), "{err}");
        let err = get_values(&mut fake(Vec::new()), &mut Vec::new(), "t").unwrap_err();
        assert!(matches!(err, ClientError::Cut { .. }), "{err}");
    }
}
