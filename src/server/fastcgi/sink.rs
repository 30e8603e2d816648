//! One FastCGI request's response: STDOUT records, then END_REQUEST through the
//! connection's one ending ([`FcgiConn::end_request`]), whichever path ran it; a copy
//! of `wsgi.errors` as STDERR records.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::FcgiConn;
use crate::proto::fastcgi::{self as fcgi, ProtocolStatus};
use crate::proto::response::HeadStyle;
use crate::wsgi::{End, ErrorsForward, Sent, Sink};

/// State one request shares between its sink, its `wsgi.errors` and the reader.
#[derive(Default)]
pub(in crate::server) struct ReqFlags {
    /// FCGI_ABORT_REQUEST arrived: stop, answer END_REQUEST.
    pub aborted: AtomicBool,
    /// END_REQUEST is written: `wsgi.errors` no longer goes to the front server.
    pub done: AtomicBool,
    /// STDERR records were sent (an empty one ends the stream).
    pub stderr_used: AtomicBool,
}

/// `wsgi.errors` lines copied to the front server as STDERR records of request `id`.
pub(super) fn stderr_forward(
    conn: &Arc<FcgiConn>,
    id: u16,
    flags: &Arc<ReqFlags>,
) -> ErrorsForward {
    // Weak: an app may keep `wsgi.errors` long after the request; that must not keep
    // the connection open.
    let conn = Arc::downgrade(conn);
    let flags = Arc::clone(flags);
    Box::new(move |line: &[u8]| {
        if flags.done.load(Ordering::Acquire) || flags.aborted.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = conn.upgrade() else { return };
        let mut out = Vec::with_capacity(line.len() + 16);
        fcgi::encode_stream(&mut out, fcgi::STDERR, id, line);
        flags.stderr_used.store(true, Ordering::Release);
        let _ = conn.write_unless(&out, &flags.done);
    })
}

/// One FastCGI request's response: STDOUT records, then END_REQUEST.
pub struct FcgiSink {
    conn: Arc<FcgiConn>,
    id: u16,
    keep_conn: bool,
    flags: Arc<ReqFlags>,
    written: u64,
    started: Instant,
    finished: bool,
}

impl FcgiSink {
    pub(super) fn new(
        conn: Arc<FcgiConn>,
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        started: Instant,
    ) -> FcgiSink {
        FcgiSink {
            conn,
            id,
            keep_conn,
            flags,
            written: 0,
            started,
            finished: false,
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.flags.aborted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the front server aborted the request (FCGI_ABORT_REQUEST)",
            ));
        }
        Ok(())
    }

    /// The tail of a complete response: [empty STDERR], empty STDOUT, END_REQUEST.
    fn tail(&self) -> Vec<u8> {
        let mut tail = Vec::with_capacity(40);
        if self.flags.stderr_used.load(Ordering::Acquire) {
            fcgi::encode_record(&mut tail, fcgi::STDERR, self.id, &[]);
        }
        fcgi::encode_record(&mut tail, fcgi::STDOUT, self.id, &[]);
        fcgi::encode_end_request(&mut tail, self.id, 0, ProtocolStatus::RequestComplete);
        tail
    }

    /// The end, answered (`true`: END_REQUEST) or cut.
    fn end(&mut self, answer: bool) {
        self.finished = true;
        self.flags.done.store(true, Ordering::Release);
        let tail = answer.then(|| self.tail());
        self.conn
            .end_request(self.id, self.keep_conn, tail.as_deref());
    }
}

impl Sink for FcgiSink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut out = Vec::with_capacity(data.len() + 16 * (data.len() / fcgi::MAX_CONTENT + 1));
        fcgi::encode_stream(&mut out, fcgi::STDOUT, self.id, data);
        self.conn.write(&out)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
        // Records need a header per 64 KiB: read the file and frame it (no sendfile).
        let mut buf = vec![0u8; fcgi::MAX_CONTENT.min(usize::try_from(len).unwrap_or(usize::MAX))];
        let (mut off, end) = (offset, offset + len);
        while off < end {
            let want = usize::try_from(end - off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ));
            }
            self.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    fn finish(&mut self, end: End) -> Sent {
        let aborted = self.flags.aborted.load(Ordering::Acquire);
        let answer = match end {
            End::Complete(_) => true,
            // The front server asked to stop: it still expects END_REQUEST.
            End::ClientGone(_) => aborted && !self.conn.is_broken(),
            End::Incomplete(_) => false,
        };
        self.end(answer);
        Sent {
            bytes: self.written,
            started: self.started,
        }
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle::Cgi
    }
}

impl Drop for FcgiSink {
    fn drop(&mut self) {
        if !self.finished {
            tracing::error!(
                "internal error: a FastCGI response was dropped unfinished; connection aborted"
            );
            self.end(false);
        }
    }
}
