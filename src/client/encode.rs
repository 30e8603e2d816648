//! The request as nginx's `uwsgi_pass`, `fastcgi_pass` and `scgi_pass` frame it: the CGI
//! variables of the stock `*_params` files, then one uwsgi packet, FastCGI records
//! (docs/protocols.md §2.5) or an SCGI netstring head (§3), followed by the body.

use super::url::{Scheme, Target, Url};
use super::RequestArgs;
use crate::proto::{cgi, fastcgi as fcgi, scgi, uwsgi};

/// The request id of the FastCGI requests we send (nginx and Apache always use 1).
pub const FCGI_REQUEST_ID: u16 = 1;
/// STDIN record size with `--no-content-length`: small enough that even a modest body
/// takes several records, so the server's streaming path is exercised.
const STREAMED_STDIN_RECORD: usize = 8 * 1024;

/// One CGI variable: name and value bytes.
pub type Var = (Vec<u8>, Vec<u8>);

/// What to send, whatever the protocol.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Upper case (`GET`, `POST`).
    pub method: String,
    /// `Name: value` lines, sent as `HTTP_*` variables.
    pub headers: &'a [String],
    /// The body; `None` when the user gave none (then no CONTENT_LENGTH and no default
    /// CONTENT_TYPE), `Some(b"")` for an empty one.
    pub body: Option<&'a [u8]>,
    /// FastCGI: no CONTENT_LENGTH, the body in [`STREAMED_STDIN_RECORD`]-byte records
    /// written one by one (`--no-content-length`).
    pub streamed: bool,
    /// FastCGI: FCGI_KEEP_CONN in BEGIN_REQUEST, the server keeps the connection open.
    pub keep_conn: bool,
}

impl<'a> Request<'a> {
    /// `postern request`'s options; `body` is what `--data` named.
    pub fn from_args(args: &'a RequestArgs, body: &'a [u8]) -> Request<'a> {
        let method = args.method.clone().unwrap_or_else(|| {
            if args.data.is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        });
        Request {
            method: method.to_ascii_uppercase(),
            headers: &args.headers,
            body: args.data.is_some().then_some(body),
            streamed: args.no_content_length,
            keep_conn: false,
        }
    }

    /// The bytes to send on a new connection (or a kept FastCGI one), as buffers each
    /// written with its own `write_all` (several only for a streamed body). An `Err` is a
    /// usage error.
    pub fn encode(&self, url: &Url) -> Result<Vec<Vec<u8>>, String> {
        let vars = cgi_vars(self, url)?;
        let pairs: Vec<(&[u8], &[u8])> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let body = self.body.unwrap_or_default();
        Ok(match url.scheme {
            Scheme::Uwsgi => {
                let mut packet = Vec::new();
                uwsgi::encode_packet(0, 0, &pairs, &mut packet)
                    .map_err(|e| format!("the request is too big for uwsgi: {e}"))?;
                packet.extend_from_slice(body);
                vec![packet]
            }
            Scheme::FastCgi => fastcgi_request(&pairs, body, self.streamed, self.keep_conn),
            Scheme::Scgi => {
                // NUL ends an SCGI name or value; a header's is refused in cgi_vars, but a
                // path can decode to one (`%00`).
                if let Some((k, _)) = pairs.iter().find(|(k, v)| k.contains(&0) || v.contains(&0)) {
                    return Err(format!(
                        "{} contains a NUL byte (%00), which SCGI cannot carry",
                        String::from_utf8_lossy(k)
                    ));
                }
                let mut packet = Vec::new();
                scgi::encode_head(&pairs, body.len() as u64, &mut packet);
                packet.extend_from_slice(body);
                vec![packet]
            }
        })
    }
}

/// The CGI variables of the request, as nginx's stock `uwsgi_params`, `fastcgi_params`
/// and `scgi_params` send them, plus the headers as `HTTP_*`.
///
/// All schemes get PATH_INFO (the decoded path). FastCGI also gets `SCRIPT_NAME=""`, the
/// setting docs/protocols.md §2.13 asks admins for, so no mount is needed on the server.
/// CONTENT_LENGTH is left out with `--no-content-length`; for SCGI, `scgi::encode_head`
/// replaces it with its own, first, and adds `SCGI=1`.
pub fn cgi_vars(req: &Request, url: &Url) -> Result<Vec<Var>, String> {
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
        (b"REQUEST_METHOD".to_vec(), req.method.clone().into_bytes()),
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
    if let Some(body) = req.body {
        if !req.streamed {
            vars.push((
                b"CONTENT_LENGTH".to_vec(),
                body.len().to_string().into_bytes(),
            ));
        }
    }
    let mut has_host = false;
    let mut has_type = false;
    for h in req.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} is not 'Name: value'"))?;
        let name = k.trim().to_ascii_uppercase().replace('-', "_");
        let value = v.trim().as_bytes().to_vec();
        if name.is_empty() || value.contains(&0) {
            // SCGI separates names and values with NUL; no front end sends either.
            return Err(format!("header {h:?} cannot be sent"));
        }
        if name == "CONTENT_TYPE" {
            vars.push((b"CONTENT_TYPE".to_vec(), value.clone()));
            has_type = true;
        }
        has_host |= name == "HOST";
        vars.push((format!("HTTP_{name}").into_bytes(), value));
    }
    if !has_type && req.body.is_some() {
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

/// The FastCGI request (docs/protocols.md §2.5): BEGIN_REQUEST (id 1, RESPONDER, with or
/// without FCGI_KEEP_CONN), the PARAMS stream (records of at most 65535 bytes, then an
/// empty one) and the STDIN stream (likewise, then an empty one, sent even without a
/// body).
///
/// `streamed` (`--no-content-length`): the body goes in [`STREAMED_STDIN_RECORD`]-byte
/// records, each in its own buffer so that it is written on its own, the way nginx
/// forwards a chunked upload with `fastcgi_request_buffering off`.
pub fn fastcgi_request(
    pairs: &[(&[u8], &[u8])],
    body: &[u8],
    streamed: bool,
    keep_conn: bool,
) -> Vec<Vec<u8>> {
    let mut params = Vec::new();
    fcgi::encode_pairs(pairs, &mut params);
    let mut head = Vec::new();
    fcgi::encode_begin_request(&mut head, FCGI_REQUEST_ID, fcgi::ROLE_RESPONDER, keep_conn);
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

#[cfg(test)]
mod tests {
    use super::super::records;
    use super::super::url::parse_url;
    use super::*;

    fn args(url: &str) -> RequestArgs {
        RequestArgs {
            url: url.into(),
            headers: vec!["X-Test: yes".into(), "Content-Type: text/plain".into()],
            method: None,
            data: Some("payload".into()),
            timeout: 1.0,
            no_content_length: false,
            fail: false,
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
        let vars = cgi_vars(&Request::from_args(&a, b"payload"), &url).unwrap();
        assert_eq!(var(&vars, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(var(&vars, "PATH_INFO"), Some(&b"/a b"[..]));
        assert_eq!(var(&vars, "QUERY_STRING"), Some(&b"x=1"[..]));
        assert_eq!(var(&vars, "REQUEST_METHOD"), Some(&b"POST"[..]));
        assert_eq!(var(&vars, "CONTENT_LENGTH"), Some(&b"7"[..]));
        assert_eq!(var(&vars, "CONTENT_TYPE"), Some(&b"text/plain"[..]));
        assert_eq!(var(&vars, "HTTP_X_TEST"), Some(&b"yes"[..]));
        assert_eq!(var(&vars, "SERVER_PORT"), Some(&b"9000"[..]));
        a.no_content_length = true;
        let vars = cgi_vars(&Request::from_args(&a, b"payload"), &url).unwrap();
        assert_eq!(var(&vars, "CONTENT_LENGTH"), None);
        // uwsgi keeps its variables: no SCRIPT_NAME.
        let a = args("uwsgi://h/");
        let url = parse_url(&a.url, |_| false).unwrap();
        let vars = cgi_vars(&Request::from_args(&a, b"payload"), &url).unwrap();
        assert_eq!(var(&vars, "SCRIPT_NAME"), None);
    }

    #[test]
    fn without_data_there_is_no_content_length_but_an_empty_body_has_one() {
        let mut a = args("uwsgi://h/");
        a.data = None;
        a.headers.clear();
        let url = parse_url(&a.url, |_| false).unwrap();
        let vars = cgi_vars(&Request::from_args(&a, b""), &url).unwrap();
        assert_eq!(var(&vars, "REQUEST_METHOD"), Some(&b"GET"[..]));
        assert_eq!(var(&vars, "CONTENT_LENGTH"), None);
        assert_eq!(var(&vars, "CONTENT_TYPE"), None);
        assert_eq!(var(&vars, "HTTP_HOST"), Some(&b"h"[..]));
        a.data = Some(String::new());
        let vars = cgi_vars(&Request::from_args(&a, b""), &url).unwrap();
        assert_eq!(var(&vars, "CONTENT_LENGTH"), Some(&b"0"[..]));
    }

    #[test]
    fn frames_a_fastcgi_request() {
        let pairs: [(&[u8], &[u8]); 1] = [(b"REQUEST_METHOD", b"POST")];
        let body = vec![7u8; 70_000];
        let writes = fastcgi_request(&pairs, &body, false, false);
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
        let writes = fastcgi_request(&pairs, &body[..20_000], true, false);
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
        let recs = records(&fastcgi_request(&pairs, b"", false, false)[0]);
        assert_eq!(recs.last().unwrap().0, fcgi::STDIN);
        assert_eq!(recs.iter().filter(|r| r.0 == fcgi::STDIN).count(), 1);
        // keep_conn sets FCGI_KEEP_CONN.
        let recs = records(&fastcgi_request(&pairs, b"", false, true)[0]);
        assert!(fcgi::parse_begin(&recs[0].2).unwrap().keep_conn);
    }
}
