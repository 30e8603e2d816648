//! Printing `postern request`'s answer `curl -i` style, and its exit code: a uwsgi
//! answer as it came, a CGI answer (FastCGI, SCGI) turned into HTTP by
//! [`response::cgi_to_http`]. The answer is printed as it arrives ([`Printer`]): only
//! the head is held, up to [`HEAD_LIMIT`], so a response of any length (an endless one
//! included, until `--timeout`) takes bounded memory.

use std::io::{self, Write};

use super::fastcgi::{ReadError, Stdout};
use super::{escape_controls, ClientError, EXIT_5XX, EXIT_CONNECT};
use crate::proto::response;

/// The longest response head (status line or CGI headers, up to the empty line)
/// `postern request` reads: the server's own limit on a request head (65535 bytes) and
/// the most nginx's `uwsgi_buffer_size` / `fastcgi_buffer_size` usefully take. A head
/// still unfinished past it is refused, not kept growing.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// Prints the response (or the GET_VALUES answer) as raw bytes.
pub fn write_stdout(bytes: &[u8]) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// What the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// uwsgi: an HTTP status line and headers, printed as they are.
    Http,
    /// SCGI: a CGI response, printed as HTTP.
    Cgi,
    /// FastCGI's STDOUT: a CGI response, printed as HTTP (an HTTP status line there is
    /// warned about: nginx skips it).
    FastCgi,
}

/// Prints a response as it arrives: the head once it is complete (converted from CGI
/// for FastCGI and SCGI), then each piece of the body as it comes.
pub struct Printer<'a> {
    answer: Answer,
    out: &'a mut dyn Write,
    label: &'a str,
    /// The head so far (and any body bytes that came with it), until it is printed.
    head: Vec<u8>,
    /// The body is written with its control characters escaped (stdout is a terminal).
    escape_body: bool,
    /// Set once the head is printed: its status code (`None`: no HTTP status line).
    status: Option<Option<u16>>,
    received: usize,
    /// The lowest status that exits [`EXIT_5XX`]: 500, or 400 with `--fail`.
    fail_at: u16,
}

impl<'a> Printer<'a> {
    pub fn new(answer: Answer, out: &'a mut dyn Write, label: &'a str) -> Printer<'a> {
        Printer {
            answer,
            out,
            label,
            head: Vec::new(),
            escape_body: false,
            status: None,
            received: 0,
            fail_at: 500,
        }
    }

    /// A 4xx exits [`EXIT_5XX`] too (`--fail`, as curl's: a health check that the app
    /// refusing every request must fail, an `ALLOWED_HOSTS` 400 say).
    pub fn fail_on_4xx(mut self, yes: bool) -> Self {
        self.fail_at = if yes { 400 } else { 500 };
        self
    }

    /// Escapes the body's control characters too ([`escape_controls`]): for a
    /// terminal, where they would be run, not shown. Not for a pipe or a file, which
    /// get the body's bytes as they are.
    pub fn escape_body(mut self, yes: bool) -> Self {
        self.escape_body = yes;
        self
    }

    fn write_body(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.escape_body {
            let mut escaped = Vec::with_capacity(bytes.len());
            escape_controls(bytes, &mut escaped);
            self.out.write_all(&escaped)
        } else {
            self.out.write_all(bytes)
        }
        .map_err(ClientError::Output)
    }

    /// The server, for messages.
    pub fn label(&self) -> &str {
        self.label
    }

    /// The next bytes of the response.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.received += bytes.len();
        if self.status.is_some() {
            return self.write_body(bytes);
        }
        self.head.extend_from_slice(bytes);
        match head_end(&self.head) {
            Some(end) if end <= HEAD_LIMIT => self.print_head(),
            _ if self.head.len() > HEAD_LIMIT => Err(ClientError::Protocol {
                target: self.label.to_owned(),
                reason: format!(
                    "the response head (status line and headers) is over {} KiB; postern request reads no more of it",
                    HEAD_LIMIT / 1024
                ),
            }),
            _ => Ok(()),
        }
    }

    fn print_head(&mut self) -> Result<(), ClientError> {
        let buf = std::mem::take(&mut self.head);
        let (status, bytes) = match self.answer {
            Answer::Http => (response::status_code(&buf), buf),
            Answer::Cgi | Answer::FastCgi => {
                if self.answer == Answer::FastCgi && buf.starts_with(b"HTTP/") {
                    super::say(format_args!(
                        "postern request: warning: the FastCGI response starts with an HTTP \
                         status line; nginx skips it and sends 200 unless a Status header follows"
                    ));
                }
                let (status, http) =
                    response::cgi_to_http(&buf).map_err(|reason| ClientError::Protocol {
                        target: self.label.to_owned(),
                        reason: reason.to_string(),
                    })?;
                (Some(status), http)
            }
        };
        self.status = Some(status);
        // The head is text for a reader, always shown with its control characters
        // escaped: a server's `X: \x1b]0;title\x07` must not drive the terminal.
        let end = head_end(&bytes).unwrap_or(bytes.len());
        let mut head = Vec::with_capacity(end + 16);
        escape_controls(&bytes[..end], &mut head);
        self.out.write_all(&head).map_err(ClientError::Output)?;
        self.write_body(&bytes[end..])
    }

    /// The response is complete: prints a head still held (one without an empty line
    /// ending it) and returns the exit code.
    pub fn finish(mut self) -> Result<i32, ClientError> {
        if self.status.is_none() {
            if self.received == 0 {
                return Err(ClientError::Io {
                    target: self.label.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without answering",
                    ),
                });
            }
            self.print_head()?;
        }
        self.out.flush().map_err(ClientError::Output)?;
        Ok(match self.status.flatten() {
            Some(s) if s >= self.fail_at => EXIT_5XX,
            Some(_) => 0,
            None => {
                super::say(format_args!(
                    "postern request: the response has no HTTP status line"
                ));
                EXIT_CONNECT
            }
        })
    }
}

/// FastCGI's STDOUT records go straight to the printer.
impl Stdout for Printer<'_> {
    fn append(&mut self, content: &[u8]) -> Result<(), ReadError> {
        self.feed(content)
            .map_err(|e| ReadError::Client(Box::new(e)))
    }

    fn received(&self) -> usize {
        self.received
    }
}

/// Where the head ends: just after its first empty line (CRLF or bare LF endings, as
/// CGI allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl];
        pos += nl + 1;
        if line.is_empty() || line == b"\r" {
            return Some(pos);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(answer: Answer, pieces: &[&[u8]]) -> (Result<i32, String>, Vec<u8>) {
        let mut out = Vec::new();
        let mut p = Printer::new(answer, &mut out, "t");
        let mut r = Ok(());
        for piece in pieces {
            r = r.and_then(|()| p.feed(piece));
        }
        let r = r.and_then(|()| p.finish()).map_err(|e| e.to_string());
        (r, out)
    }

    #[test]
    fn prints_the_head_then_the_body_as_it_comes() {
        let (r, out) = printed(
            Answer::Http,
            &[b"HTTP/1.1 503 Busy\r\nX: ", b"1\r\n\r\nbo", b"dy"],
        );
        assert_eq!(r, Ok(EXIT_5XX));
        assert_eq!(out, b"HTTP/1.1 503 Busy\r\nX: 1\r\n\r\nbody");
        let (r, out) = printed(Answer::Cgi, &[b"Status: 404\nX: 1\n", b"\nbody"]);
        assert_eq!(r, Ok(0));
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nX: 1\r\n\r\nbody");
        // No empty line: printed at the end as before (uwsgi), refused (CGI).
        let (r, out) = printed(Answer::Http, &[b"HTTP/1.1 200 OK\r\nX: 1"]);
        assert_eq!((r, &out[..]), (Ok(0), &b"HTTP/1.1 200 OK\r\nX: 1"[..]));
        let (r, _) = printed(Answer::Cgi, &[b"X: 1"]);
        assert!(r.unwrap_err().contains("does not end"));
        let (r, _) = printed(Answer::Http, &[]);
        assert!(r.unwrap_err().contains("without answering"));
    }

    // regression (probe 334, MEDIUM): a health check could not fail on a 4xx (Django
    // answering 400 to every request for a host not in ALLOWED_HOSTS exited 0).
    #[test]
    fn fail_makes_a_4xx_exit_22_too() {
        for (fail, head, code) in [
            (false, &b"Status: 400 Bad Request\n\n"[..], 0),
            (true, &b"Status: 400 Bad Request\n\n"[..], EXIT_5XX),
            (true, &b"Status: 399 Odd\n\n"[..], 0),
            (true, &b"Status: 503\n\n"[..], EXIT_5XX),
        ] {
            let mut out = Vec::new();
            let mut p = Printer::new(Answer::Cgi, &mut out, "t").fail_on_4xx(fail);
            p.feed(head).unwrap();
            assert_eq!(p.finish().unwrap(), code, "{fail} {head:?}");
        }
    }

    // See: sec's audit: a server's header `X-Evil: \x1b]0;pwned-title\x07\x1b[2J` was
    // printed raw, so it retitled and cleared the terminal of whoever ran the request.
    #[test]
    fn escapes_control_characters_in_the_head_and_in_a_terminals_body() {
        let answer: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nX-Evil: \x1b]0;t\x07\x1b[2J\rRED\xc2\x9b1m caf\xc3\xa9\tx\r\n\r\n",
            b"body\x1b[0m\r\n",
        ];
        let head =
            "HTTP/1.1 200 OK\r\nX-Evil: \\x1B]0;t\\x07\\x1B[2J\\x0DRED\\xC2\\x9B1m café\tx\r\n\r\n";
        // To a pipe or a file: the body as it came.
        let (r, out) = printed(Answer::Http, answer);
        assert_eq!(r, Ok(0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{head}body\x1b[0m\r\n")
        );
        // To a terminal: the body escaped too, line ends kept.
        let mut out = Vec::new();
        let mut p = Printer::new(Answer::Cgi, &mut out, "t").escape_body(true);
        p.feed(b"X: \x1b[1m\n\nbo").unwrap();
        p.feed(b"dy\x1b[0m\x07\n").unwrap();
        assert_eq!(p.finish().unwrap(), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX: \\x1B[1m\r\n\r\nbody\\x1B[0m\\x07\n"
        );
    }

    // See: sec's audit: an endless response head grew `postern request` to 1.5 GB.
    #[test]
    fn rejects_a_head_over_the_limit() {
        let big = vec![b'A'; 16 * 1024];
        let mut out = Vec::new();
        let mut p = Printer::new(Answer::Http, &mut out, "t");
        p.feed(b"HTTP/1.1 200 OK\r\nX: ").unwrap();
        let err = (0..10)
            .find_map(|_| p.feed(&big).err())
            .expect("refused within 160 KiB");
        assert!(
            err.to_string()
                .contains("head (status line and headers) is over 64 KiB"),
            "{err}"
        );
        assert!(p.head.len() <= HEAD_LIMIT + big.len());
        drop(p);
        assert!(out.is_empty());
        // A head just under the limit is printed, and a body of any length after it
        // is not held.
        let mut out = Vec::new();
        let mut p = Printer::new(Answer::Http, &mut out, "t");
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.resize(HEAD_LIMIT - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        p.feed(&head).unwrap();
        for _ in 0..100 {
            p.feed(&big).unwrap();
            assert!(p.head.is_empty());
        }
        assert_eq!(p.finish().unwrap(), 0);
        assert_eq!(out.len(), HEAD_LIMIT + 100 * big.len());
    }
}
