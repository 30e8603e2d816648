//! The fast path of a FastCGI connection: one read that holds one whole simple request
//! is served on the Python thread that read it, with no hand-off.

use std::sync::Arc;
use std::time::Instant;

use super::sink::{stderr_forward, FcgiSink, ReqFlags};
use super::FcgiConn;
use crate::codec::fastcgi::assemble;
use crate::proto::fastcgi as fcgi;
use crate::server::lane::{FcgiSettings, Limits};
use crate::server::span::request_span;
use crate::wsgi::{Body, ListenerInfo, Request};

/// Looks at the first bytes of a read of a held connection: a whole simple request
/// becomes a [`Request`] served inline (the connection's owner is `Inline` then);
/// `None` leaves the connection held, for the slow lane. `registered`: the connection
/// is in the Python threads' epoll (it was woken there).
pub fn admit_whole(
    conn: &Arc<FcgiConn>,
    buf: &[u8],
    info: &ListenerInfo,
    limits: &Limits,
    settings: &FcgiSettings,
    started: Instant,
    registered: bool,
) -> Option<Request> {
    let max_stdin = usize::try_from(limits.spool_threshold).unwrap_or(usize::MAX);
    let whole = fcgi::whole_request(buf, limits.buffer_size, max_stdin)?;
    // Anything unusual (a body that does not match its length, one over --max-body)
    // is for the slow lane, which answers it properly.
    let assembled = assemble(whole.params, Some(whole.stdin), limits.max_body).ok()?;
    if assembled.excess > 0 {
        return None;
    }
    let head = assembled.head;
    let body = match assembled.body {
        Some(b) if !b.is_empty() => Body::Memory(b),
        _ => Body::Empty,
    };
    let (span, request_id) = request_span(&head, &conn.peer);
    let flags = Arc::new(ReqFlags::default());
    let errors_forward = settings
        .stderr
        .then(|| stderr_forward(conn, whole.id, &flags));
    // nginx and Apache send nothing more until END_REQUEST; anything that does come
    // on a keep-conn connection (a multiplexed request, an abort, a close) is the slow
    // lane's to read.
    conn.serve_inline(whole.id, whole.keep_conn, Arc::clone(&flags), registered);
    Some(Request {
        head,
        body,
        listener: info.clone(),
        sink: Box::new(FcgiSink::new(
            Arc::clone(conn),
            whole.id,
            whole.keep_conn,
            flags,
            started,
        )),
        span,
        request_id,
        errors_forward,
    })
}
