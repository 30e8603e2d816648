//! Where `postern request` and `postern bench` connect: the URL grammar
//! (`SCHEME://HOST[:PORT]/path?q`, `SCHEME+unix:///sock/path/p?q`) and the connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::proto::cgi;

/// The protocol named by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Uwsgi,
    FastCgi,
    Scgi,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::Uwsgi, Scheme::FastCgi, Scheme::Scgi];

    /// The URL scheme (`fastcgi` in `fastcgi://` and `fastcgi+unix://`).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Uwsgi => "uwsgi",
            Scheme::FastCgi => "fastcgi",
            Scheme::Scgi => "scgi",
        }
    }

    /// The port when the URL names none (uWSGI's, PHP-FPM's and the SCGI spec's habits).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Uwsgi => 3031,
            Scheme::FastCgi => 9000,
            Scheme::Scgi => 4000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Target {
    /// `host:port` or `unix:/path`, for messages.
    pub fn label(&self) -> String {
        match self {
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// Resolves the host (once: `postern bench` connects many times).
    pub fn resolve(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Target::Tcp { host, port } => Endpoint::Tcp(
                (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::other("the host resolves to no address"))?,
            ),
            Target::Unix(p) => Endpoint::Unix(p.clone()),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub target: Target,
    /// Path and query as sent (`/a%20b?x=1`).
    pub uri: String,
}

/// Parses `SCHEME://HOST[:PORT]/p?q` and `SCHEME+unix:///sock/path/p?q` (or a
/// percent-encoded socket path as the host: `SCHEME+unix://%2Frun%2Fa.sock/p`), with
/// SCHEME one of `uwsgi`, `fastcgi`, `scgi`.
/// Why a URL gives no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Malformed (a usage error).
    #[error("{0}")]
    Bad(String),
    /// A `SCHEME+unix:///…` path with no socket file along it: the server is not there
    /// (not started, or stopped and its socket removed), or the path is wrong.
    #[error("no Unix socket found along {0}: is the server running, and is the path right?")]
    NoSocket(String),
}

impl From<String> for UrlError {
    fn from(s: String) -> Self {
        UrlError::Bad(s)
    }
}

pub fn parse_url(url: &str, is_socket: impl Fn(&str) -> bool) -> Result<Url, UrlError> {
    let usage = || {
        format!(
            "{url:?}: expected SCHEME://HOST[:PORT]/path or SCHEME+unix:///path/to.sock/path, \
             SCHEME being uwsgi, fastcgi or scgi"
        )
    };
    // Apache's spelling of a Unix socket (`ProxyPass "/" "unix:/run/app.sock|fcgi://app/"`,
    // as postern's start-up line prints it).
    // regression (review LOW): it got only the usage line.
    if let Some((path, target)) = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("unix:"))
        .and_then(|_| url[5..].split_once('|'))
    {
        if let Some((scheme, after)) = target.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            let scheme = if scheme == "fcgi" { "fastcgi" } else { &scheme };
            let uri = after.find('/').map_or("/", |i| &after[i..]);
            return Err(UrlError::from(format!(
                "{url:?}: `unix:PATH|SCHEME://` is Apache's spelling; write {scheme}+unix://{}{uri}",
                path.trim_end_matches('/')
            )));
        }
    }
    // A bare socket path (what `postern bench` takes, with --protocol): the URL needs
    // the protocol. regression (probe 427): only the usage line.
    if let Some(path) = url.get(..5).filter(|p| p.eq_ignore_ascii_case("unix:")) {
        let path = &url[path.len()..];
        if !path.contains("://") {
            let path = path.trim_end_matches('/');
            return Err(UrlError::from(format!(
                "{url:?}: name the protocol the socket speaks: uwsgi+unix://{path}/ (or fastcgi+unix://…, scgi+unix://…), then the request's path"
            )));
        }
    }
    let (scheme_part, rest) = url.split_once("://").ok_or_else(usage)?;
    // A fragment is the client's own: curl and browsers never send it, nor does nginx
    // pass one on. regression: `…/x?a=1#frag` sent QUERY_STRING `a=1#frag` (PATH_INFO
    // `/x#frag`).
    let full = rest;
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let scheme_part = scheme_part.to_ascii_lowercase();
    let (name, unix) = match scheme_part.strip_suffix("+unix") {
        Some(name) => (name, true),
        None => (scheme_part.as_str(), false),
    };
    // Apache's `ProxyPass … fcgi://HOST:PORT/` (as postern's start-up line prints it).
    // regression (hostile LOW): it got only the usage line.
    if name == "fcgi" {
        let fixed = match rest.get(..5).filter(|p| p.eq_ignore_ascii_case("unix:")) {
            Some(_) if !unix => format!("fastcgi+unix://{}", unix_url_path(&rest[5..])),
            _ if unix => format!("fastcgi+unix://{rest}"),
            _ => format!("fastcgi://{rest}"),
        };
        return Err(UrlError::from(format!(
            "{url:?}: `fcgi://` is Apache's spelling; write {fixed}"
        )));
    }
    // regression (probe 427): an HTTP URL got only the usage line.
    if name == "http" || name == "https" {
        return Err(UrlError::from(format!(
            "{url:?}: postern speaks uwsgi, FastCGI and SCGI, not HTTP: for a URL nginx serves, use curl; to ask postern's own socket, write uwsgi://HOST:PORT/path (or fastcgi://, scgi://, or SCHEME+unix:///path/to.sock/path)"
        )));
    }
    let scheme = Scheme::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(usage)?;
    // regression: `uwsgi:///tmp/x.sock/` said only "the URL has no host".
    if !unix && rest.starts_with('/') {
        return Err(UrlError::from(format!(
            "{url:?} has no host: for a Unix socket, write {name}+unix://{rest}"
        )));
    }
    // regression: nginx's spelling after the scheme (`uwsgi://unix:/run/app.sock/`, as
    // postern's start-up line prints `uwsgi_pass unix:…;`) was read as the host `unix`
    // and failed on a DNS lookup.
    if !unix {
        if let Some(path) = rest
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("unix:"))
            .and_then(|_| rest[5..].starts_with('/').then(|| &rest[5..]))
        {
            // nginx's `unix:/path/to.sock:/uri`: the colon before the URI goes.
            // regression (hostile LOW): the advice kept it, and did not work.
            let path = unix_url_path(path);
            return Err(UrlError::from(format!(
                "{url:?}: `unix:` is nginx's spelling; for a Unix socket, write {name}+unix://{path}"
            )));
        }
    }
    let (target, uri) = if unix && full.starts_with('/') {
        // A `#` may be part of a socket's path (`/run/a#1.sock/x`): the socket is
        // looked for with it first, the fragment cut from the request path after it.
        // regression (review of 27159ed): such a path no longer worked.
        match parse_unix(full, &is_socket) {
            Ok((target, uri)) => {
                let uri = uri
                    .split_once('#')
                    .map_or(uri.as_str(), |(u, _)| u)
                    .to_owned();
                (target, uri)
            }
            Err(_) if rest.len() < full.len() => parse_unix(rest, &is_socket)?,
            Err(e) => return Err(e),
        }
    } else if unix {
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

/// The path part of nginx's `unix:/path/to.sock:/uri` (or `unix:/path/to.sock:`) as a
/// `+unix://` URL has it: the colon before the URI goes.
fn unix_url_path(path: &str) -> String {
    match path.find(":/").or_else(|| path.find(":?")) {
        Some(i) => format!("{}{}", &path[..i], &path[i + 1..]),
        None => path.strip_suffix(':').unwrap_or(path).to_owned(),
    }
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
fn parse_unix(rest: &str, is_socket: impl Fn(&str) -> bool) -> Result<(Target, String), UrlError> {
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
    Err(UrlError::NoSocket(path_part.to_owned()))
}

pub fn is_socket_file(p: &str) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// A resolved [`Target`].
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// Connects with `timeout` and sets it as the read and write timeout.
    pub fn connect(&self, timeout: Duration) -> io::Result<Conn> {
        Ok(match self {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Tcp(s)
            }
            Endpoint::Unix(p) => {
                // A Unix connect waits while the listen queue is full (a server that
                // stops accepting) for as long as the send timeout: set it first.
                let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                s.set_write_timeout(Some(timeout))?;
                s.connect(&socket2::SockAddr::unix(p)?)?;
                let s = UnixStream::from(std::os::fd::OwnedFd::from(s));
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Unix(s)
            }
        })
    }
}

/// One connection to the server.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Sets the read and write timeouts.
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Conn::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
        assert!(parse_url("http://x/", |_| false)
            .unwrap_err()
            .to_string()
            .contains("not HTTP: for a URL nginx serves, use curl"));
        assert!(parse_url("unix:/run/a.sock", |_| false)
            .unwrap_err()
            .to_string()
            .contains("name the protocol the socket speaks: uwsgi+unix:///run/a.sock/"));
    }

    // regression: the fragment was sent as part of the path or the query.
    #[test]
    fn a_fragment_is_not_sent() {
        for (url, uri) in [
            ("uwsgi://127.0.0.1/x?a=1#frag", "/x?a=1"),
            ("uwsgi://127.0.0.1/x#frag?b=2", "/x"),
            ("scgi://127.0.0.1#frag", "/"),
            ("fastcgi+unix://%2Ftmp%2Fa%23b.sock/y#f", "/y"),
        ] {
            assert_eq!(parse_url(url, |_| false).unwrap().uri, uri, "{url}");
        }
        let u = parse_url("uwsgi+unix:///tmp/a.sock/p?q=1#f", |p| p == "/tmp/a.sock").unwrap();
        assert_eq!(u.uri, "/p?q=1");
        let u = parse_url("fastcgi+unix://%2Ftmp%2Fa%23b.sock/", |_| false).unwrap();
        assert_eq!(u.target, Target::Unix("/tmp/a#b.sock".into()));
        // A `#` in a socket's path, written as it is.
        let u = parse_url("uwsgi+unix:///tmp/x/a#b.sock/x?q#f", |p| {
            p == "/tmp/x/a#b.sock"
        })
        .unwrap();
        assert_eq!(
            (u.target, u.uri.as_str()),
            (Target::Unix("/tmp/x/a#b.sock".into()), "/x?q")
        );
        let u = parse_url("uwsgi+unix:///tmp/a.sock#f/x", |p| p == "/tmp/a.sock").unwrap();
        assert_eq!(
            (u.target, u.uri.as_str()),
            (Target::Unix("/tmp/a.sock".into()), "/")
        );
        assert!(parse_url("uwsgi+unix:///tmp/none.sock/x#f", |_| false).is_err());
    }

    #[test]
    fn nginx_s_unix_spelling_gets_the_unix_url() {
        let e = parse_url("uwsgi://unix:/tmp/a.sock/x?q=1", |_| false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"uwsgi://unix:/tmp/a.sock/x?q=1\": `unix:` is nginx's spelling; for a Unix socket, write uwsgi+unix:///tmp/a.sock/x?q=1"
        );
        // nginx's `unix:PATH:/uri` (proxy_pass's form): the colon goes.
        let e = parse_url("uwsgi://unix:/tmp/a.sock:/x", |_| false).unwrap_err();
        assert!(
            e.to_string().ends_with("write uwsgi+unix:///tmp/a.sock/x"),
            "{e}"
        );
        let e = parse_url("uwsgi://unix:/tmp/a.sock:?q=1", |_| false).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("write uwsgi+unix:///tmp/a.sock?q=1"),
            "{e}"
        );
        let e = parse_url("uwsgi://unix:/tmp/a.sock:", |_| false).unwrap_err();
        assert!(
            e.to_string().ends_with("write uwsgi+unix:///tmp/a.sock"),
            "{e}"
        );
        let e = parse_url("fcgi://unix:/tmp/a.sock/x", |_| false).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("write fastcgi+unix:///tmp/a.sock/x"),
            "{e}"
        );
        // Apache's Unix socket spelling.
        let e = parse_url("unix:/run/app.sock|fcgi://app/x?q=1", |_| false).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("write fastcgi+unix:///run/app.sock/x?q=1"),
            "{e}"
        );
        let e = parse_url("unix:/run/app.sock|uwsgi://app", |_| false).unwrap_err();
        assert!(
            e.to_string().ends_with("write uwsgi+unix:///run/app.sock/"),
            "{e}"
        );
        // Apache's scheme.
        let e = parse_url("fcgi://127.0.0.1:9000/a", |_| false).unwrap_err();
        assert!(
            e.to_string().ends_with("write fastcgi://127.0.0.1:9000/a"),
            "{e}"
        );
        let e = parse_url("FastCGI://UNIX:/run/s.sock", |_| false).unwrap_err();
        assert!(
            e.to_string().ends_with("write fastcgi+unix:///run/s.sock"),
            "{e}"
        );
        // A host that is only called unix is still a host.
        let u = parse_url("scgi://unix:4000/", |_| false).unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "unix".into(),
                port: 4000
            }
        );
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
        assert_eq!(
            parse_url("uwsgi+unix:///nope/x", |_| false).unwrap_err(),
            UrlError::NoSocket("/nope/x".into())
        );
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
}
