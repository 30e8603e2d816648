//! New requests multiplexed onto a FastCGI connection while its worker leaves (a reload,
//! a recycle) and other workers serve on.
//!
//! A connection with a request in flight stays with its worker: that request's answer
//! is written here. An idle one goes to the serving workers ([`super::Parking`]). A
//! client that multiplexes (a new request id while another runs, `FCGI_MPXS_CONNS`)
//! may never leave its connection idle, so the leaving worker would take every new id
//! itself until `--graceful-timeout` cut them. Instead, from the moment the worker
//! leaves, a request that begins on such a connection is not started here: its records
//! are held, framed again as they came ([`Holding`]), and once the requests that run
//! here have ended the slow lane hands the connection on with them ahead of what its
//! socket still holds (the same hand-over as a request past `--max-requests`). When
//! nobody can take them (the whole server stops, the front server sent EOF) or the
//! connection ends here first, they are refused with FCGI_OVERLOADED.

use crate::proto::fastcgi as fcgi;

/// At most this much is held for one connection (records framed again): the hand-over
/// carries at most [`super::handover::MAX_READ`], and what follows the held records
/// (less than one record, up to 65,543 bytes plus padding) goes with them, as do the
/// ids of bodies answered early that may still come.
pub(super) const HOLD_MAX: usize =
    super::handover::MAX_READ - 65_536 - 8 - 256 - ABORTS - super::handover::LATE_ROOM;

/// Room kept for held requests' FCGI_ABORT_REQUEST records (one each, 8 bytes, for at
/// most 64 requests on a connection), never refused for room.
const ABORTS: usize = 64 * fcgi::HEADER_LEN;

/// The requests held on one connection (see the module's comment).
#[derive(Default)]
pub(super) struct Holding {
    /// Each record framed again, with its request id, in the order they came.
    records: Vec<(u16, Vec<u8>)>,
    /// The held requests: (id, FCGI_KEEP_CONN).
    ids: Vec<(u16, bool)>,
    /// The bytes of `records`.
    bytes: usize,
}

impl Holding {
    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// How many requests are held.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Request `id` is held here.
    pub(super) fn holds(&self, id: u16) -> bool {
        self.ids.iter().any(|&(i, _)| i == id)
    }

    /// Holds new request `id`: its BEGIN_REQUEST and its PARAMS stream. False when that
    /// would hold more than [`HOLD_MAX`]: nothing is held then.
    pub(super) fn begin(&mut self, id: u16, keep_conn: bool, params: &[u8]) -> bool {
        let mut out = Vec::with_capacity(params.len() + 64);
        fcgi::encode_head(&mut out, id, keep_conn, params);
        if !self.fits(out.len()) {
            return false;
        }
        self.ids.push((id, keep_conn));
        self.push(id, out);
        true
    }

    /// Holds a STDIN record of held request `id` (`data` empty: the end of its body).
    /// False when that would hold more than [`HOLD_MAX`]: the request is let go (its
    /// records dropped, [`Holding::release`]), and its FCGI_KEEP_CONN returned with it.
    pub(super) fn stdin(&mut self, id: u16, data: &[u8]) -> Result<(), bool> {
        let mut out = Vec::with_capacity(data.len() + 16);
        if data.is_empty() {
            fcgi::encode_record(&mut out, fcgi::STDIN, id, &[]);
        } else {
            fcgi::encode_stream(&mut out, fcgi::STDIN, id, data);
        }
        if !self.fits(out.len()) {
            return Err(self.release(id));
        }
        self.push(id, out);
        Ok(())
    }

    /// Holds FCGI_ABORT_REQUEST for held request `id`: the worker that takes the
    /// connection answers it as any abort of a request whose app has not run.
    pub(super) fn abort(&mut self, id: u16) {
        let aborted = |(i, r): &(u16, Vec<u8>)| *i == id && r.get(1) == Some(&fcgi::ABORT_REQUEST);
        if self.records.iter().any(aborted) {
            return;
        }
        let mut out = Vec::with_capacity(fcgi::HEADER_LEN);
        fcgi::encode_record(&mut out, fcgi::ABORT_REQUEST, id, &[]);
        // Never refused for room: eight bytes, and the abort must not be lost.
        self.push(id, out);
    }

    /// Lets go of held request `id`: its records are dropped. Its FCGI_KEEP_CONN
    /// (false when it was not held).
    pub(super) fn release(&mut self, id: u16) -> bool {
        let Some(i) = self.ids.iter().position(|&(i, _)| i == id) else {
            return false;
        };
        let (_, keep_conn) = self.ids.remove(i);
        self.records.retain(|(i, r)| {
            if *i == id {
                self.bytes -= r.len();
            }
            *i != id
        });
        keep_conn
    }

    /// Lets go of every held request: their ids and FCGI_KEEP_CONN flags.
    pub(super) fn release_all(&mut self) -> Vec<(u16, bool)> {
        let ids = std::mem::take(&mut self.ids);
        *self = Holding::default();
        ids
    }

    /// The held records in the order they came, then `rest` (the bytes read after
    /// them, not decoded yet): what goes with the connection.
    pub(super) fn framed(&self, rest: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + rest.len());
        for (_, r) in &self.records {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(rest);
        out
    }

    fn fits(&self, more: usize) -> bool {
        self.bytes + more <= HOLD_MAX
    }

    fn push(&mut self, id: u16, record: Vec<u8>) {
        self.bytes += record.len();
        self.records.push((id, record));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::proto::fastcgi::{ConnLimits, ConnParser, Event, Values};

    fn parse(bytes: &[u8]) -> Vec<Event> {
        let mut parser = ConnParser::new(ConnLimits {
            max_params: 1 << 20,
            max_reqs: 64,
            values: Values {
                max_conns: 1,
                max_reqs: 1,
                mpxs_conns: true,
            },
        });
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        parser.feed(&mut buf, &mut events).unwrap();
        assert!(buf.is_empty());
        events
    }

    #[test]
    fn held_requests_read_back_as_they_came_in_order() {
        let mut h = Holding::default();
        assert!(h.begin(3, true, b"\x01\x01ab"));
        assert!(h.begin(5, false, b"\x01\x02cde"));
        h.stdin(3, b"body").unwrap();
        h.stdin(5, b"x").unwrap();
        h.stdin(3, b"").unwrap();
        h.abort(5);
        // Aborted again (a BEGIN_REQUEST reusing its id): held once.
        h.abort(5);
        assert_eq!((h.len(), h.holds(3), h.holds(4)), (2, true, false));
        let mut rest = Vec::new();
        fcgi::encode_begin_request(&mut rest, 7, fcgi::ROLE_RESPONDER, true);
        let events = parse(&h.framed(&rest));
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Params { id, keep_conn, .. } => format!("params {id} {keep_conn}"),
                Event::Stdin { id, data } => format!("stdin {id} {}", data.len()),
                Event::StdinEnd { id } => format!("end {id}"),
                Event::Abort { id } => format!("abort {id}"),
                e => format!("{e:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "params 3 true",
                "params 5 false",
                "stdin 3 4",
                "stdin 5 1",
                "end 3",
                "abort 5"
            ]
        );
    }

    #[test]
    fn what_is_held_stays_under_the_bound_with_what_follows() {
        let mut h = Holding::default();
        let big = vec![b'b'; 40_000];
        assert!(h.begin(1, true, b""));
        assert!(h.begin(2, true, b""));
        h.stdin(1, &big).unwrap();
        // Over the bound: request 1 is let go whole, request 2 stays.
        assert_eq!(h.stdin(1, &big), Err(true));
        assert_eq!((h.holds(1), h.holds(2), h.len()), (false, true, 1));
        assert!(h.begin(3, true, &big));
        assert!(!h.begin(4, true, &big));
        assert!(h.bytes <= HOLD_MAX);
        // The largest partial record that can follow still fits the hand-over.
        let most = h.framed(&vec![0u8; 65_535 + 8 + 255]);
        assert!(most.len() <= super::super::handover::MAX_READ);
        assert_eq!(h.release_all(), [(2, true), (3, true)]);
        assert!(h.is_empty());
    }
}
