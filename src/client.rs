//! `postern request`: sends one request the way nginx's `uwsgi_pass` would and prints
//! the response `curl -i` style. Blocking std I/O: it is a debugging and health-check
//! tool, one request per run.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::RequestArgs;
use crate::proto::{cgi, uwsgi};

/// Exit code for a connection failure (curl's "couldn't connect").
pub const EXIT_CONNECT: i32 = 7;
/// Exit code for a 5xx answer (curl --fail's code).
pub const EXIT_5XX: i32 = 22;
/// Exit code for a malformed URL or option.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("talking to {target}: {source}")]
    Io { target: String, source: io::Error },
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            _ => EXIT_CONNECT,
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
    target: Target,
    /// Path and query as sent (`/a%20b?x=1`).
    uri: String,
}

/// Parses `uwsgi://HOST[:PORT]/p?q` and `uwsgi+unix:///sock/path/p?q` (or a
/// percent-encoded socket path as the host: `uwsgi+unix://%2Frun%2Fa.sock/p`).
fn parse_url(url: &str, is_socket: impl Fn(&str) -> bool) -> Result<Url, String> {
    if let Some(rest) = url.strip_prefix("uwsgi://") {
        let (authority, uri) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        let uri = if uri.starts_with('?') {
            format!("/{uri}")
        } else {
            uri.to_owned()
        };
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
            3031
        } else {
            port.parse().map_err(|_| format!("bad port {port:?}"))?
        };
        return Ok(Url {
            target: Target::Tcp { host, port },
            uri,
        });
    }
    if let Some(rest) = url.strip_prefix("uwsgi+unix://") {
        if !rest.starts_with('/') {
            // Percent-encoded socket path as the authority.
            let (auth, uri) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let path = String::from_utf8_lossy(&cgi::percent_decode(auth.as_bytes())).into_owned();
            return Ok(Url {
                target: Target::Unix(path.into()),
                uri: uri.to_owned(),
            });
        }
        let (path_part, query) = match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // The socket is the longest leading run of segments that is a socket file.
        let segments: Vec<&str> = path_part.split('/').collect();
        for end in (2..=segments.len()).rev() {
            let candidate = segments[..end].join("/");
            if is_socket(&candidate) {
                let tail = segments[end..].join("/");
                return Ok(Url {
                    target: Target::Unix(candidate.into()),
                    uri: format!("/{tail}{query}"),
                });
            }
        }
        return Err(format!("no Unix socket found along {path_part}"));
    }
    Err(format!(
        "{url:?}: expected uwsgi://HOST:PORT/path or uwsgi+unix:///path/to.sock/path"
    ))
}

fn is_socket_file(p: &str) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: &RequestArgs) -> Result<i32, ClientError> {
    let url = parse_url(&args.url, is_socket_file).map_err(ClientError::Usage)?;
    let body = match &args.data {
        None => Vec::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(file)
                .map_err(|e| ClientError::Usage(format!("cannot read --data @{file}: {e}")))?,
            None => d.clone().into_bytes(),
        },
    };
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
    let (server_name, server_port, label) = match &url.target {
        Target::Tcp { host, port } => (host.clone(), port.to_string(), format!("{host}:{port}")),
        Target::Unix(p) => (
            "localhost".into(),
            "80".into(),
            format!("unix:{}", p.display()),
        ),
    };

    let mut vars: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"QUERY_STRING".to_vec(), query.into_bytes()),
        (b"REQUEST_METHOD".to_vec(), method.into_bytes()),
        (b"REQUEST_URI".to_vec(), url.uri.clone().into_bytes()),
        (b"PATH_INFO".to_vec(), cgi::percent_decode(path.as_bytes())),
        (b"SERVER_PROTOCOL".to_vec(), b"HTTP/1.1".to_vec()),
        (b"REQUEST_SCHEME".to_vec(), b"http".to_vec()),
        (b"REMOTE_ADDR".to_vec(), b"127.0.0.1".to_vec()),
        (b"REMOTE_PORT".to_vec(), b"0".to_vec()),
        (b"SERVER_NAME".to_vec(), server_name.clone().into_bytes()),
        (b"SERVER_PORT".to_vec(), server_port.into_bytes()),
    ];
    if !body.is_empty() || args.data.is_some() {
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
    let pairs: Vec<(&[u8], &[u8])> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let mut packet = Vec::new();
    uwsgi::encode_packet(0, 0, &pairs, &mut packet)
        .map_err(|e| ClientError::Usage(format!("the request is too big for uwsgi: {e}")))?;
    packet.extend_from_slice(&body);

    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let connect_err = |source| ClientError::Connect {
        target: label.clone(),
        source,
    };
    let mut stream: Box<dyn Stream> = match &url.target {
        Target::Tcp { host, port } => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(connect_err)?
                .next()
                .ok_or_else(|| connect_err(io::Error::other("the host resolves to no address")))?;
            let s = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
            s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
            Box::new(s)
        }
        Target::Unix(p) => {
            let s = UnixStream::connect(p).map_err(connect_err)?;
            s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
            Box::new(s)
        }
    };
    let io_err = |source| ClientError::Io {
        target: label.clone(),
        source,
    };
    stream.write_all(&packet).map_err(io_err)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io_err)?;
    if response.is_empty() {
        return Err(ClientError::Io {
            target: label,
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection without answering",
            ),
        });
    }
    io::stdout().write_all(&response).map_err(io_err)?;
    let _ = io::stdout().flush();
    let status = response_status(&response);
    Ok(match status {
        Some(s) if s >= 500 => EXIT_5XX,
        Some(_) => 0,
        None => {
            eprintln!("postern request: the response has no HTTP status line");
            EXIT_CONNECT
        }
    })
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
}
