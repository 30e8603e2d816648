//! A request's tracing span, and the access line of a request postern answered itself.
//! Used by the fast path and both slow lanes; imports nothing of the server layer.

use std::sync::Arc;
use std::time::Instant;

use tracing::field;

use crate::codec::{Head, Protocol};
use crate::logging::{RequestId, RequestSpan, UntrustedField};

/// The `request` span and the request's id: the span carries the id, method, path and
/// peer, then status and duration (ms) once known. At a level that disables it, a
/// line logged inside names the id and the peer all the same ([`RequestSpan`]).
pub fn request_span(head: &Head, peer: &Arc<str>) -> (RequestSpan, RequestId) {
    request_span_with(head, peer, RequestId::for_head(head))
}

/// [`request_span`] with the id already known (`RequestId::for_head`'s answer).
pub fn request_span_with(head: &Head, peer: &Arc<str>, id: RequestId) -> (RequestSpan, RequestId) {
    // The field values are looked up inside the macro: it evaluates them only when the
    // span is enabled (`--log-level warn` skips the lookups; the formatting is lazy
    // anyway, in `Untrusted`'s Display).
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %UntrustedField(head.get(b"REQUEST_METHOD").unwrap_or(b"-")),
        path = %UntrustedField(
            head.get(b"REQUEST_URI")
                .or_else(|| head.get(b"PATH_INFO"))
                .or_else(|| head.get(b"SCRIPT_NAME"))
                .unwrap_or(b"-")
        ),
        peer = %UntrustedField(peer.as_bytes()),
        status = field::Empty,
        ms = field::Empty
    );
    crate::logging::request_span_made(&span);
    (RequestSpan::new(span, peer, id), id)
}

/// The access line of a request postern closed before it was served: the front server
/// went away (`ending` [`crate::logging::Ending::ClientGone`]), or postern closed it
/// for a body that stalled or came too slowly.
pub fn closed_access(
    head: &Head,
    id: &RequestId,
    protocol: Protocol,
    ending: crate::logging::Ending,
    started: Instant,
) {
    crate::logging::record_end(0, started);
    crate::logging::access(&crate::logging::Access {
        head,
        id,
        protocol,
        status: 0,
        ending,
        bytes: 0,
        started,
    });
}

/// The access line of a request postern answered itself (`sent`: the bytes written,
/// `None` when the front server was gone).
pub fn refused_access(
    head: &Head,
    id: &RequestId,
    protocol: Protocol,
    status: u16,
    sent: Option<u64>,
    started: Instant,
) {
    crate::logging::record_end(status, started);
    crate::logging::access(&crate::logging::Access {
        head,
        id,
        protocol,
        status,
        ending: match sent {
            Some(_) => crate::logging::Ending::Complete,
            None => crate::logging::Ending::ClientGone,
        },
        bytes: sent.unwrap_or(0),
        started,
    });
}
