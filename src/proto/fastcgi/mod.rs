//! FastCGI 1.0 (docs/protocols.md §2): 8-byte records, name-value pairs and the per-connection
//! request state machine. Pure like all of `proto`: bytes in, borrowed views and events
//! out, no I/O, so the server and the fuzzer drive the same code.
//!
//! - [`record`]: the record header, BEGIN_REQUEST body and the reply encoders (§2.1–§2.3, §2.6).
//! - [`params`]: name-value pairs of PARAMS and GET_VALUES, and GET_VALUES_RESULT (§2.4, §2.7).
//! - [`request`]: [`ConnParser`], one connection's BEGIN → PARAMS → STDIN per request id
//!   (§2.5, §2.8, §2.9), and the [`whole_request`] fast path.
//!
//! ```text
//! u8 version=1 | u8 type | u16 BE requestId | u16 BE contentLength | u8 paddingLength | u8 0
//! contentLength bytes of content | paddingLength bytes of padding
//! ```

pub mod params;
pub mod record;
pub mod request;

pub use params::*;
pub use record::*;
pub use request::*;

/// The only record version there is (FCGI_VERSION_1, §2.1).
pub const VERSION_1: u8 = 1;
/// Length of a record header (§2.1).
pub const HEADER_LEN: usize = 8;
/// `contentLength` is a u16, so no record carries more content than this (§2.1).
pub const MAX_CONTENT: usize = u16::MAX as usize;

// Record types (§2.2).
/// FCGI_BEGIN_REQUEST: server → app, starts request `requestId`.
pub const BEGIN_REQUEST: u8 = 1;
/// FCGI_ABORT_REQUEST: server → app, the client went away.
pub const ABORT_REQUEST: u8 = 2;
/// FCGI_END_REQUEST: app → server, the request is over.
pub const END_REQUEST: u8 = 3;
/// FCGI_PARAMS: server → app stream of name-value pairs (the CGI environment).
pub const PARAMS: u8 = 4;
/// FCGI_STDIN: server → app stream, the request body.
pub const STDIN: u8 = 5;
/// FCGI_STDOUT: app → server stream, the CGI response.
pub const STDOUT: u8 = 6;
/// FCGI_STDERR: app → server stream, logged by the web server.
pub const STDERR: u8 = 7;
/// FCGI_DATA: server → app stream, Filter role only.
pub const DATA: u8 = 8;
/// FCGI_GET_VALUES: management query (requestId 0).
pub const GET_VALUES: u8 = 9;
/// FCGI_GET_VALUES_RESULT: management answer (requestId 0).
pub const GET_VALUES_RESULT: u8 = 10;
/// FCGI_UNKNOWN_TYPE: management answer to a record type the app does not know.
pub const UNKNOWN_TYPE: u8 = 11;

// Roles in the BEGIN_REQUEST body (§2.3). postern serves responders only.
/// FCGI_RESPONDER: the CGI-like role, the only one served.
pub const ROLE_RESPONDER: u16 = 1;
/// FCGI_AUTHORIZER: answered with UNKNOWN_ROLE.
pub const ROLE_AUTHORIZER: u16 = 2;
/// FCGI_FILTER: answered with UNKNOWN_ROLE.
pub const ROLE_FILTER: u16 = 3;

/// FCGI_KEEP_CONN, bit 0 of the BEGIN_REQUEST flags: keep the connection after END_REQUEST (§2.3).
pub const FLAG_KEEP_CONN: u8 = 1;

/// `protocolStatus` of an END_REQUEST body (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtocolStatus {
    /// FCGI_REQUEST_COMPLETE: the normal end of a request.
    RequestComplete = 0,
    /// FCGI_CANT_MPX_CONN: a second request arrived while one is in flight (§2.9).
    CantMpxConn = 1,
    /// FCGI_OVERLOADED: too many requests in flight on this connection.
    Overloaded = 2,
    /// FCGI_UNKNOWN_ROLE: the role is not RESPONDER.
    UnknownRole = 3,
}
