//! Reading what a FastCGI server sends back (docs/protocols.md §2.6, §2.7): records up to
//! FCGI_END_REQUEST, whose STDOUT stream is the CGI response, and the answer to
//! FCGI_GET_VALUES.

use std::io::{self, Read, Write};

use super::encode::FCGI_REQUEST_ID;
use super::{ClientError, Stream};
use crate::proto::fastcgi as fcgi;

/// Why reading a FastCGI answer failed; [`ReadError::at`] names the server.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The connection closed before the answer was complete.
    Cut(String),
    /// The server answered, but not in FastCGI or not to our request.
    Protocol(String),
    /// Where the response went refused it (`postern request`'s printer: a head over its
    /// limit, stdout closed).
    Client(Box<ClientError>),
}

impl ReadError {
    pub fn at(self, target: &str) -> ClientError {
        let target = target.to_owned();
        match self {
            ReadError::Io(source) => ClientError::Io { target, source },
            ReadError::Cut(reason) => ClientError::Cut { target, reason },
            ReadError::Protocol(reason) => ClientError::Protocol { target, reason },
            ReadError::Client(e) => *e,
        }
    }
}

/// One FastCGI record read from the server, content copied out, padding skipped.
pub struct Record {
    pub kind: u8,
    pub request_id: u16,
    pub content: Vec<u8>,
}

/// Reads the next record. `buf` holds bytes read but not yet consumed, between calls.
/// `Ok(None)`: the server closed the connection between records. The version byte is
/// checked by [`fcgi::parse_record`] (anything but 1 is an error).
pub fn read_record<R: Read + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Record>, ReadError> {
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
            Err(e) => return Err(ReadError::Protocol(format!("not a FastCGI record: {e}"))),
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ReadError::Cut(format!(
                "the connection closed in the middle of a FastCGI record ({} bytes of it received)",
                buf.len()
            )));
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

/// Where [`read_response`] puts what is not the response itself.
pub trait Aside {
    /// FCGI_STDERR content, as it arrives.
    fn stderr(&mut self, content: &[u8]);
    /// A non-zero appStatus in FCGI_END_REQUEST (only reported, not an error).
    fn app_status(&mut self, status: u32);
}

/// `postern bench`: the app's stderr and exit status are not its business.
pub struct Ignore;

impl Aside for Ignore {
    fn stderr(&mut self, _: &[u8]) {}
    fn app_status(&mut self, _: u32) {}
}

/// FCGI_STDERR content, printed to our stderr line by line as it arrives, each line
/// prefixed `fastcgi stderr: `. A last line without a newline is printed on drop (or
/// before the appStatus), so that it shows even when the response fails.
#[derive(Default)]
pub struct StderrLines {
    pending: Vec<u8>,
}

impl StderrLines {
    fn print(line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        super::say(format_args!(
            "fastcgi stderr: {}",
            super::escaped_text(line)
        ));
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            Self::print(&std::mem::take(&mut self.pending));
        }
    }
}

/// The longest FCGI_STDERR line [`StderrLines`] holds before it prints what it has: a
/// server that never sends a newline must not grow it without end.
const STDERR_LINE: usize = 8 * 1024;

impl Aside for StderrLines {
    fn stderr(&mut self, content: &[u8]) {
        self.pending.extend_from_slice(content);
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            Self::print(&line[..nl]);
        }
        if self.pending.len() > STDERR_LINE {
            self.flush();
        }
    }

    fn app_status(&mut self, status: u32) {
        self.flush();
        super::say(format_args!("postern request: FastCGI appStatus {status}"));
    }
}

impl Drop for StderrLines {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Where [`read_response`] puts the FCGI_STDOUT stream: all of it (`postern request`),
/// or what `postern bench` keeps of it (a response of any length in bounded memory).
pub trait Stdout {
    /// An error ends the reading (and is returned by [`read_response`]).
    fn append(&mut self, content: &[u8]) -> Result<(), ReadError>;
    /// Bytes received so far.
    fn received(&self) -> usize;
}

impl Stdout for Vec<u8> {
    fn append(&mut self, content: &[u8]) -> Result<(), ReadError> {
        self.extend_from_slice(content);
        Ok(())
    }

    fn received(&self) -> usize {
        self.len()
    }
}

/// Reads records until FCGI_END_REQUEST and appends the STDOUT stream (the CGI response)
/// to `stdout`. `buf` carries bytes read past a record between calls (a kept
/// connection reads the next response with the same `buf`).
///
/// Like nginx (docs/protocols.md §2.11), only STDOUT, STDERR and END_REQUEST records for
/// request id 1 are accepted. The connection closing before END_REQUEST means the
/// response was cut, even after the empty STDOUT record.
pub fn read_response(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    stdout: &mut impl Stdout,
    aside: &mut impl Aside,
) -> Result<(), ReadError> {
    let mut records = 0usize;
    loop {
        let Some(record) = read_record(stream, buf)? else {
            return Err(ReadError::Cut(if records == 0 {
                // Typical of a socket that speaks another protocol and gave up on ours.
                "the connection closed before any FastCGI record (is it a FastCGI socket?)"
                    .to_owned()
            } else {
                format!(
                    "the connection closed before FCGI_END_REQUEST ({} bytes of FCGI_STDOUT received)",
                    stdout.received()
                )
            }));
        };
        records += 1;
        if record.request_id != FCGI_REQUEST_ID {
            return Err(ReadError::Protocol(format!(
                "{} for request id {} (the request was id {FCGI_REQUEST_ID})",
                record_name(record.kind),
                record.request_id
            )));
        }
        match record.kind {
            fcgi::STDOUT => stdout.append(&record.content)?,
            fcgi::STDERR => aside.stderr(&record.content),
            fcgi::END_REQUEST => {
                check_end_request(&record.content, aside).map_err(ReadError::Protocol)?;
                if stdout.received() == 0 {
                    return Err(ReadError::Protocol(
                        "the request ended without a response (no FCGI_STDOUT content)".into(),
                    ));
                }
                return Ok(());
            }
            other => {
                return Err(ReadError::Protocol(format!(
                    "unexpected {}",
                    record_name(other)
                )))
            }
        }
    }
}

/// The CGI response of the one request sent on `stream`, whole, the server's
/// FCGI_STDERR printed on our stderr (`postern request` prints it as it comes instead).
#[cfg(test)]
pub fn read_fastcgi_response(stream: &mut impl Read, label: &str) -> Result<Vec<u8>, ClientError> {
    let mut stdout = Vec::new();
    let mut stderr = StderrLines::default();
    read_response(stream, &mut Vec::new(), &mut stdout, &mut stderr).map_err(|e| e.at(label))?;
    Ok(stdout)
}

/// Checks an FCGI_END_REQUEST body (§2.6): `u32 appStatus | u8 protocolStatus | 3
/// reserved`. A protocolStatus other than REQUEST_COMPLETE is an error; a non-zero
/// appStatus is only reported.
fn check_end_request(content: &[u8], aside: &mut impl Aside) -> Result<(), String> {
    let &[a0, a1, a2, a3, protocol_status, _, _, _] = content else {
        return Err(format!(
            "FCGI_END_REQUEST body of {} bytes (expected 8)",
            content.len()
        ));
    };
    let app_status = u32::from_be_bytes([a0, a1, a2, a3]);
    if app_status != 0 {
        aside.app_status(app_status);
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
pub fn get_values(
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
    let Some(answer) = read_record(stream, &mut buf).map_err(|e| e.at(label))? else {
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
        let field = |r: &std::ops::Range<u32>| &answer.content[r.start as usize..r.end as usize];
        // The server's text: a newline or an escape sequence in it is shown, not run.
        let mut line = field(name).to_vec();
        line.push(b'=');
        line.extend_from_slice(field(value));
        super::escape_controls(&line, &mut text);
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
            super::say(format_args!(
                "postern request: the server did not answer {}",
                String::from_utf8_lossy(name)
            ));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::super::{records, EXIT_CONNECT};
    use super::*;

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
    fn reads_responses_one_after_the_other_on_a_kept_connection() {
        let mut answer = Vec::new();
        for body in [&b"Status: 200 OK\r\n\r\none"[..], b"Status: 404\r\n\r\ntwo"] {
            fcgi::encode_stream(&mut answer, fcgi::STDOUT, 1, body);
            fcgi::encode_record(&mut answer, fcgi::STDOUT, 1, &[]);
            fcgi::encode_end_request(&mut answer, 1, 0, fcgi::ProtocolStatus::RequestComplete);
        }
        // One read hands over both answers: the second stays in `buf`.
        let mut server = io::Cursor::new(answer);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        read_response(&mut server, &mut buf, &mut out, &mut Ignore).unwrap();
        assert_eq!(out, b"Status: 200 OK\r\n\r\none");
        out.clear();
        read_response(&mut server, &mut buf, &mut out, &mut Ignore).unwrap();
        assert_eq!(out, b"Status: 404\r\n\r\ntwo");
        assert!(buf.is_empty());
        let err = read_response(&mut server, &mut buf, &mut out, &mut Ignore).unwrap_err();
        assert!(matches!(err, ReadError::Cut(_)), "{err:?}");
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
