//! One uwsgi connection: read the head and the body (memory or spooled), hand the
//! request to the Python pool, write what comes back, then close — cleanly when the
//! response is complete, with a reset when it is not (so nginx does not take a
//! truncated body for a whole one).

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tracing::{field, Instrument};

use crate::codec::uwsgi::UwsgiCodec;
use crate::codec::{CodecError, Frame, Head};
use crate::proto::ProtoError;
use crate::wsgi::pool::Pool;
use crate::wsgi::{Body, ListenerInfo, Out, Outcome, Request};

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest vars block (`--buffer-size`).
    pub buffer_size: usize,
    /// Bodies above this go to a temporary file (`--body-spool-threshold`).
    pub spool_threshold: u64,
    /// Larger bodies answer 413 (`--max-body`).
    pub max_body: Option<u64>,
    /// Time allowed from accept to a complete head (`--head-timeout`).
    pub head_timeout: Duration,
    /// Longest wait between two reads of the body (`--read-timeout`).
    pub read_timeout: Duration,
}

/// Everything a connection needs, shared by all connections of one listener.
pub struct Context {
    pub pool: Pool,
    pub limits: Limits,
    pub listener: ListenerInfo,
}

/// A stream postern can serve: TCP or Unix.
pub trait Conn: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static {
    fn ready(
        &self,
        interest: Interest,
    ) -> impl Future<Output = io::Result<tokio::io::Ready>> + Send;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// Makes the next close send a reset (TCP) so the peer sees an error, not EOF.
    fn set_abort(&self);
}

impl Conn for tokio::net::TcpStream {
    fn ready(
        &self,
        interest: Interest,
    ) -> impl Future<Output = io::Result<tokio::io::Ready>> + Send {
        tokio::net::TcpStream::ready(self, interest)
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::TcpStream::try_io(self, interest, f)
    }
    fn set_abort(&self) {
        // SO_LINGER 0: close() sends RST at once; nothing blocks.
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Conn for tokio::net::UnixStream {
    fn ready(
        &self,
        interest: Interest,
    ) -> impl Future<Output = io::Result<tokio::io::Ready>> + Send {
        tokio::net::UnixStream::ready(self, interest)
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        tokio::net::UnixStream::try_io(self, interest, f)
    }
    fn set_abort(&self) {
        // Unix stream sockets have no reset; the peer sees EOF. With a Content-Length
        // nginx still detects the truncation (README, "Limits and errors").
    }
}

/// How the write phase ended, when it did not end with `Out::End`.
enum WriteEnd {
    ClientGone(io::Error),
    /// The Python side stopped without a final message (internal error).
    Dropped,
}

fn latin1_lossy(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

/// Serves one connection to completion. Never panics on peer input.
pub async fn serve<C: Conn>(mut conn: C, peer: Arc<str>, ctx: Arc<Context>) {
    let started = Instant::now();
    let limits = &ctx.limits;
    let mut framed =
        FramedRead::with_capacity(&mut conn, UwsgiCodec::new(limits.buffer_size), 4096);
    let head = match timeout(limits.head_timeout, framed.next()).await {
        Err(_) => {
            let got = framed.read_buffer().len();
            tracing::warn!(%peer, got, "no complete request head within {:?} (--head-timeout); closing", limits.head_timeout);
            return;
        }
        Ok(None) => {
            tracing::debug!(%peer, "connection closed before sending a request");
            return;
        }
        Ok(Some(Err(e))) => {
            let reply = match &e {
                CodecError::Proto(ProtoError::HttpOnUwsgi) => Some((
                    400,
                    "Bad Request",
                    "This is a uwsgi socket: put nginx in front (uwsgi_pass) or use `postern request`.\n",
                )),
                CodecError::Proto(ProtoError::HeadTooLarge { .. }) => Some((
                    431,
                    "Request Header Fields Too Large",
                    "Request head over postern's --buffer-size.\n",
                )),
                _ => None,
            };
            tracing::warn!(%peer, error = %e, "bad request; closing");
            drop(framed);
            if let Some((code, reason, body)) = reply {
                reject(&mut conn, code, reason, body, limits.read_timeout).await;
            }
            return;
        }
        Ok(Some(Ok(Frame::Body(_)))) => unreachable!("the codec yields the head first"),
        Ok(Some(Ok(Frame::Head(head)))) => head,
    };

    let method = latin1_lossy(head.get(b"REQUEST_METHOD").unwrap_or(b"-"));
    let path = latin1_lossy(
        head.get(b"REQUEST_URI")
            .or_else(|| head.get(b"PATH_INFO"))
            .unwrap_or(b"-"),
    );
    let span = tracing::info_span!(
        "request",
        %method,
        %path,
        %peer,
        status = field::Empty,
    );

    if let Some(max) = limits.max_body {
        if head.content_length > max {
            span.in_scope(|| {
                tracing::warn!(
                    content_length = head.content_length,
                    max_body = max,
                    "request body over --max-body; answered 413"
                )
            });
            drop(framed);
            reject(
                &mut conn,
                413,
                "Content Too Large",
                "Request body too large.\n",
                limits.read_timeout,
            )
            .await;
            return;
        }
    }

    let body = match read_body(&mut framed, &head, limits)
        .instrument(span.clone())
        .await
    {
        Ok(b) => b,
        Err(e) => {
            span.in_scope(
                || tracing::warn!(error = %e, "could not read the request body; closing"),
            );
            return;
        }
    };
    if !framed.read_buffer().is_empty() {
        span.in_scope(|| {
            tracing::debug!(
                extra = framed.read_buffer().len(),
                "ignoring bytes after the request body"
            )
        });
    }
    drop(framed);

    let (tx, rx) = mpsc::channel(16);
    let req = Request {
        head,
        body,
        listener: ctx.listener.clone(),
        out: tx,
        span: span.clone(),
    };
    if ctx.pool.submit(req).is_err() {
        span.in_scope(|| tracing::error!("the Python threads are gone; answered 503"));
        reject(
            &mut conn,
            503,
            "Service Unavailable",
            "Server shutting down.\n",
            limits.read_timeout,
        )
        .await;
        return;
    }
    let (result, written) = write_response(&mut conn, rx).instrument(span.clone()).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let _g = span.enter();
    match result {
        Ok(Outcome {
            status,
            complete: true,
        }) => {
            span.record("status", status);
            let _ = conn.shutdown().await;
            tracing::info!(target: "postern::access", status, bytes = written, ms = format_args!("{ms:.2}"), "served");
        }
        Ok(Outcome { status, .. }) => {
            span.record("status", status);
            conn.set_abort();
            tracing::warn!(target: "postern::access", status, bytes = written, ms = format_args!("{ms:.2}"), "response incomplete; connection aborted");
        }
        Err(WriteEnd::ClientGone(e)) => {
            tracing::info!(target: "postern::access", error = %e, bytes = written, ms = format_args!("{ms:.2}"), "client went away before the response was complete");
        }
        Err(WriteEnd::Dropped) => {
            conn.set_abort();
            tracing::error!(target: "postern::access", bytes = written, "internal error: the response ended without completing; connection aborted");
        }
    }
}

/// Reads CONTENT_LENGTH bytes into memory, or into an unlinked temporary file past
/// the spool threshold.
async fn read_body<C: Conn>(
    framed: &mut FramedRead<&mut C, UwsgiCodec>,
    head: &Head,
    limits: &Limits,
) -> Result<Body, CodecError> {
    let len = head.content_length;
    if len == 0 {
        return Ok(Body::Empty);
    }
    if len <= limits.spool_threshold {
        let first = next_body(framed, limits.read_timeout, len).await?;
        if first.len() as u64 == len {
            return Ok(Body::Memory(first));
        }
        let mut buf = BytesMut::with_capacity(len as usize);
        buf.extend_from_slice(&first);
        while (buf.len() as u64) < len {
            buf.extend_from_slice(&next_body(framed, limits.read_timeout, len).await?);
        }
        return Ok(Body::Memory(buf.freeze()));
    }
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    let mut file = tokio::fs::File::from_std(file);
    let mut got = 0u64;
    while got < len {
        let chunk: Bytes = next_body(framed, limits.read_timeout, len).await?;
        got += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    tracing::debug!(bytes = len, "request body spooled to a temporary file");
    Ok(Body::File(file.into_std().await, len))
}

/// The next body chunk, within `--read-timeout`.
async fn next_body<C: Conn>(
    framed: &mut FramedRead<&mut C, UwsgiCodec>,
    t: Duration,
    len: u64,
) -> Result<Bytes, CodecError> {
    match timeout(t, framed.next()).await {
        Err(_) => Err(CodecError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no body bytes for {t:?} (--read-timeout)"),
        ))),
        Ok(None) => Err(CodecError::BodyTruncated {
            got: 0,
            expected: len,
        }),
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(Frame::Body(b)))) => Ok(b),
        Ok(Some(Ok(Frame::Head(_)))) => unreachable!("one head per connection"),
    }
}

/// Writes what the Python side sends until `End`, watching for the peer going away.
async fn write_response<C: Conn>(
    conn: &mut C,
    mut rx: mpsc::Receiver<Out>,
) -> (Result<Outcome, WriteEnd>, u64) {
    let mut written = 0u64;
    let mut scratch = [0u8; 512];
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(Out::Data(b)) => {
                    if let Err(e) = conn.write_all(&b).await {
                        return (Err(WriteEnd::ClientGone(e)), written);
                    }
                    written += b.len() as u64;
                }
                Some(Out::File { file, offset, len }) => {
                    match sendfile(conn, &file, offset, len).await {
                        Ok(n) => written += n,
                        Err(e) => return (Err(WriteEnd::ClientGone(e)), written),
                    }
                }
                Some(Out::End(outcome)) => return (Ok(outcome), written),
                None => return (Err(WriteEnd::Dropped), written),
            },
            // nginx closes its end when its client aborts: notice it while the app
            // is still working. EOF alone may be a half-close, so it only stops the
            // watch; a reset (or a failed write) means the peer is gone.
            ready = conn.ready(Interest::READABLE), if watching => {
                let gone = match ready {
                    Err(e) => Some(e),
                    Ok(_) => match conn.try_io(Interest::READABLE, || {
                        rustix::io::read(conn_fd(conn), &mut scratch).map_err(io::Error::from)
                    }) {
                        Ok(0) => {
                            watching = false;
                            None
                        }
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = gone {
                    return (Err(WriteEnd::ClientGone(e)), written);
                }
            }
        }
    }
}

fn conn_fd<C: Conn>(conn: &C) -> std::os::fd::BorrowedFd<'_> {
    conn.as_fd()
}

/// Sends `len` bytes of `file` from `offset` with sendfile(2).
async fn sendfile<C: Conn>(
    conn: &C,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    let mut off = offset;
    let end = offset + len;
    while off < end {
        conn.ready(Interest::WRITABLE).await?;
        let chunk = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match conn.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(conn_fd(conn), file, Some(&mut off), chunk)
                .map_err(io::Error::from)
        }) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Answers a small error response, then reads and discards what the peer still sends
/// (bounded) so that closing does not reset a peer that is still writing.
async fn reject<C: Conn>(conn: &mut C, code: u16, reason: &str, body: &str, wait: Duration) {
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(msg.as_bytes()).await.is_err() {
        return;
    }
    let _ = conn.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while total < 64 << 20 {
            match tokio::io::AsyncReadExt::read(conn, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(wait.min(Duration::from_secs(5)), drain).await;
}
