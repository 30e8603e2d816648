//! One FastCGI connection, sans I/O (docs/protocols.md §2.5–§2.9): [`ConnParser`] turns the
//! bytes read so far into [`Event`]s, following each request id through BEGIN_REQUEST →
//! PARAMS → STDIN, and answers what the protocol layer answers by itself (management
//! records, refused roles, too many requests). [`whole_request`] is the fast path for
//! the common case of one whole request arriving in one read.
//!
//! ```text
//! per id:  (inactive) --BEGIN--> Params --empty PARAMS--> Stdin --empty STDIN--> Done
//!          Params/Stdin/Done --finished(id)--> (inactive)
//! ```

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use super::{
    encode_end_request, encode_get_values_result, encode_unknown_type, parse_begin, parse_record,
    ProtocolStatus, Values, ABORT_REQUEST, BEGIN_REQUEST, DATA, GET_VALUES, HEADER_LEN, PARAMS,
    ROLE_RESPONDER, STDIN,
};
use crate::proto::ProtoError;

/// What one connection may ask of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// The most PARAMS bytes one request may send (its concatenated block).
    pub max_params: usize,
    /// The most requests in flight on the connection; 1 means no multiplexing (§2.9).
    pub max_reqs: usize,
    /// The answers to FCGI_GET_VALUES (§2.7).
    pub values: Values,
}

/// What the bytes fed so far mean, in arrival order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes to send to the peer now: GET_VALUES_RESULT, UNKNOWN_TYPE, or END_REQUEST for
    /// a refused BEGIN_REQUEST (unknown role, overloaded) or one aborted before its PARAMS
    /// ended. Replies produced one after the other are merged into one `Reply`.
    Reply(Vec<u8>),
    /// Request `id`'s PARAMS stream ended: `params` is the concatenated block, not yet
    /// split (run [`parse_pairs`](super::parse_pairs) on it). The app may run now.
    Params {
        id: u16,
        keep_conn: bool,
        params: Bytes,
    },
    /// A non-empty STDIN record's content for `id` (only after its `Params`).
    Stdin { id: u16, data: Bytes },
    /// The empty STDIN record: `id`'s body is complete.
    StdinEnd { id: u16 },
    /// FCGI_ABORT_REQUEST for `id`, whose `Params` event has been sent: stop the app and
    /// write END_REQUEST as usual. Sent once; later STDIN records for `id` are dropped.
    Abort { id: u16 },
    /// Request `id`'s PARAMS stream ended, `size` bytes in all, over `limit`
    /// (`max_params`): its data past the limit was dropped as it came, never held. The
    /// app must not run: answer it 431 and END_REQUEST, then [`finished`](ConnParser::finished).
    /// Its STDIN events follow as for `Params` (ignore them). `logged`: the variables
    /// its access line shows (method, path, …) found whole in what was dropped, as
    /// pairs ([`keep_logged_pairs`](super::keep_logged_pairs)).
    ///
    /// `pair`: refused before the stream's end, as soon as one name-value pair's lengths
    /// announced `size` bytes for that pair alone, over `limit` (no block within the
    /// limit can hold it: [`pair_over_limit`](super::pair_over_limit)). Answered the
    /// same way; the rest of its records (PARAMS, STDIN, an abort) are ignored, and
    /// none of its STDIN events follow.
    ParamsTooLarge {
        id: u16,
        keep_conn: bool,
        size: usize,
        limit: usize,
        logged: Bytes,
        pair: bool,
    },
}

/// A request whose BEGIN_REQUEST was accepted and which is not finished yet.
#[derive(Debug)]
struct Request {
    keep_conn: bool,
    phase: Phase,
    aborted: bool,
    /// A BEGIN_REQUEST named it again while it was in flight, after its body had all
    /// come: the records for its id are ignored until it is finished.
    begun_again: bool,
}

/// What a BEGIN_REQUEST for an id already in flight did (§2.9 calls it a protocol
/// error; only that id pays for it, never the connection and its other requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BegunAgain {
    /// The request was still sending its PARAMS: ended with END_REQUEST at once (as
    /// an ABORT_REQUEST then), its app never called.
    Ended,
    /// Its body was still coming: aborted ([`Event::Abort`]): its app's body read
    /// fails, END_REQUEST follows when the app returns.
    Aborted,
    /// It had come whole: it goes on and is answered.
    Ignored,
    /// It was aborted (FCGI_ABORT_REQUEST) and its END_REQUEST is not out yet: the
    /// front server reused the id before it (§2.4 frees an id only then). The new
    /// request's records cannot be told from the old one's: the server closes the
    /// connection once the requests that came whole are answered, rather than leave
    /// the new one unanswered on it.
    AfterAbort,
}

#[derive(Debug)]
enum Phase {
    /// Collecting the PARAMS stream; the offset in it of the next pair whose lengths
    /// have not all been read ([`pair_over_limit`](super::pair_over_limit)).
    Params(Block, usize),
    /// The PARAMS stream passed `max_params` (`size` bytes so far): the rest is
    /// counted and dropped until its end, but for the variables the access line shows
    /// (`logged`, a few KiB at most).
    Dropping { size: usize, logged: Vec<u8> },
    /// PARAMS ended (the app may be running); STDIN records are the body.
    Stdin,
    /// The empty STDIN record came; further STDIN records are ignored.
    Done,
    /// Refused before the end of its PARAMS (a pair over `max_params`,
    /// [`Event::ParamsTooLarge`] with `pair`): every further record of it is ignored.
    Refused,
}

/// The PARAMS stream so far. nginx sends all params in one record, so the common case
/// keeps that record's content as it is, with no copy.
#[derive(Debug, Default)]
enum Block {
    #[default]
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl Block {
    fn len(&self) -> usize {
        match self {
            Block::Empty => 0,
            Block::One(b) => b.len(),
            Block::Many(v) => v.len(),
        }
    }

    /// The stream so far, in one piece.
    fn bytes(&self) -> &[u8] {
        match self {
            Block::Empty => &[],
            Block::One(b) => b,
            Block::Many(v) => v,
        }
    }

    fn push(&mut self, content: Bytes) {
        *self = match std::mem::take(self) {
            Block::Empty => Block::One(content),
            Block::One(first) => {
                let mut joined = Vec::with_capacity(first.len() + content.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&content);
                Block::Many(joined)
            }
            Block::Many(mut joined) => {
                joined.extend_from_slice(&content);
                Block::Many(joined)
            }
        };
    }

    fn freeze(self) -> Bytes {
        match self {
            Block::Empty => Bytes::new(),
            Block::One(b) => b,
            Block::Many(v) => Bytes::from(v),
        }
    }
}

/// The request ids begun on a connection over its life (a server keeps them across
/// the parsers that read it). Records for an inactive id are ignored (§2.6): for one
/// begun before they are late (the rest of a request answered early); for one never
/// begun they are stray, and a peer that sends only those is no front server.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BegunIds {
    /// Ids 1..=64 (bit `id - 1`): the ids front servers use.
    low: u64,
    /// Every id, once one above 64 was begun (8 KiB).
    all: Option<Box<[u64; 1024]>>,
    /// Requests finished while their body still came (answered before the end of their
    /// STDIN: a 413, a 400, a 431): the rest of that body is still to come, until its
    /// empty STDIN record (or a BEGIN_REQUEST reusing the id). At most one per request
    /// the connection may have in flight ([`ConnParser::late_body`]).
    late: Vec<u16>,
}

impl BegunIds {
    /// What a connection's next reader needs of another's (a worker that handed it
    /// on): the requests whose bodies still come, `late` (begun, and late).
    pub fn with_late(late: &[u16]) -> BegunIds {
        let mut begun = BegunIds::default();
        // 0 is the management records' id, never a request's.
        for &id in late.iter().filter(|&&id| id != 0) {
            begun.mark(id);
            if !begun.late.contains(&id) {
                begun.late.push(id);
            }
        }
        begun
    }

    /// No request was ever begun on the connection.
    pub fn is_empty(&self) -> bool {
        self.low == 0 && self.all.is_none()
    }

    /// The requests finished while their bodies still came, whose rest may follow.
    pub fn late(&self) -> &[u16] {
        &self.late
    }

    pub fn mark(&mut self, id: u16) {
        if (1..=64).contains(&id) {
            self.low |= 1 << (id - 1);
        } else {
            let all = self.all.get_or_insert_with(|| Box::new([0; 1024]));
            all[usize::from(id / 64)] |= 1 << (id % 64);
        }
    }

    pub fn contains(&self, id: u16) -> bool {
        if (1..=64).contains(&id) {
            return self.low & (1 << (id - 1)) != 0;
        }
        self.all
            .as_ref()
            .is_some_and(|all| all[usize::from(id / 64)] & (1 << (id % 64)) != 0)
    }
}

/// The FastCGI side of one connection: records in, [`Event`]s out.
///
/// Requests are keyed by id; an id is active from its accepted BEGIN_REQUEST until the
/// server calls [`finished`](Self::finished) after writing its END_REQUEST.
#[derive(Debug)]
pub struct ConnParser {
    limits: ConnLimits,
    requests: FxHashMap<u16, Request>,
    /// A request without KEEP_CONN refused, or ended here (begun again, aborted before
    /// its PARAMS ended): close once the replies are sent.
    close_after_replies: bool,
    /// Every id a BEGIN_REQUEST named (accepted or refused) or adopted.
    begun: BegunIds,
    /// The first id since [`take_stray`](Self::take_stray) that PARAMS, STDIN or DATA
    /// came for without ever being begun.
    stray: Option<u16>,
    /// BEGIN_REQUESTs for ids in flight since [`take_begun_again`](Self::take_begun_again)
    /// (the first few).
    begun_again: Vec<(u16, BegunAgain)>,
    /// BEGIN_REQUESTs refused since [`take_refused`](Self::take_refused): the first
    /// one's id and status, and how many.
    refused: Option<Refusals>,
}

/// BEGIN_REQUESTs a connection parser refused ([`ConnParser::take_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    /// The first refused request's id and END_REQUEST status.
    pub first: (u16, ProtocolStatus),
    /// How many were refused (the first included).
    pub count: u32,
}

impl ConnParser {
    pub fn new(limits: ConnLimits) -> Self {
        ConnParser {
            limits,
            requests: FxHashMap::default(),
            close_after_replies: false,
            begun: BegunIds::default(),
            stray: None,
            begun_again: Vec::new(),
            refused: None,
        }
    }

    /// The BEGIN_REQUESTs refused (unknown role, too many requests in flight) since the
    /// last call: worth one log line, however many.
    pub fn take_refused(&mut self) -> Option<Refusals> {
        self.refused.take()
    }

    /// The most requests in flight this parser takes on one connection.
    pub fn max_reqs(&self) -> usize {
        self.limits.max_reqs
    }

    /// The BEGIN_REQUESTs for an id in flight since the last call, and what each did
    /// (at most 16 a call: each is worth a log line, a flood of them is not).
    pub fn take_begun_again(&mut self) -> Vec<(u16, BegunAgain)> {
        std::mem::take(&mut self.begun_again)
    }

    /// The ids the connection began before this parser read it.
    pub fn set_begun(&mut self, begun: BegunIds) {
        self.begun = begun;
    }

    /// The ids begun so far, for the next parser of the connection.
    pub fn take_begun(&mut self) -> BegunIds {
        std::mem::take(&mut self.begun)
    }

    /// The first id that PARAMS, STDIN or DATA records came for since the last call,
    /// though no BEGIN_REQUEST ever named it (ignored records, §2.6, from no front
    /// server: the connection may be holding itself open with them).
    pub fn take_stray(&mut self) -> Option<u16> {
        self.stray.take()
    }

    fn ignored(&mut self, id: u16) {
        if self.stray.is_none() && !self.begun.contains(id) {
            self.stray = Some(id);
        }
    }

    /// Consumes every complete record at the front of `buf`, pushing events; a partial
    /// record stays in `buf`. STDIN data and a single-record PARAMS block are split off
    /// `buf` and frozen, so they share its memory (no copy).
    ///
    /// `Err` is a fatal protocol error: log it and close the connection (events pushed
    /// before it are still valid). Fatal are: a wrong version or HTTP text; a
    /// BEGIN_REQUEST body that is not 8 bytes or on the management id 0; STDIN before
    /// the end of PARAMS; PARAMS after it. The pairs themselves are not
    /// checked here. A PARAMS block over `max_params` (checked as each record arrives) is
    /// not fatal: its data is dropped and its end gives [`Event::ParamsTooLarge`].
    ///
    /// Not fatal (§2.7–§2.9): GET_VALUES on id 0 is answered; any other type on id 0,
    /// and on another id a type a web server never sends (END_REQUEST, STDOUT, STDERR,
    /// GET_VALUES_RESULT, UNKNOWN_TYPE, 0, above 11), is answered with UNKNOWN_TYPE; a
    /// role other than RESPONDER, or a BEGIN_REQUEST with `max_reqs` requests active, is
    /// answered with END_REQUEST (UNKNOWN_ROLE; CANT_MPX_CONN if `max_reqs` ≤ 1, else
    /// OVERLOADED) and the id stays inactive. Records for inactive ids, DATA, GET_VALUES
    /// on a request id, STDIN after its end and anything after an ABORT are ignored. A
    /// BEGIN_REQUEST for an active id ends or aborts that request unless it came whole
    /// ([`BegunAgain`], reported by [`take_begun_again`](Self::take_begun_again)), and
    /// the records for that id are ignored until it is finished.
    pub fn feed(&mut self, buf: &mut BytesMut, events: &mut Vec<Event>) -> Result<(), ProtoError> {
        while let Some((len, record)) = parse_record(buf).map_err(|e| self.mid_stream(e, buf))? {
            let (kind, id, content_len) = (record.kind, record.request_id, record.content.len());
            let frame = buf.split_to(len).freeze();
            let content = frame.slice(HEADER_LEN..HEADER_LEN + content_len);
            self.record(kind, id, content, events)?;
        }
        Ok(())
    }

    /// Bad bytes after the connection's first request began are a broken FastCGI
    /// stream, not another protocol's request (a front server set up for uwsgi sends
    /// one at the start): said as the wrong version it is. regression (review 428):
    /// eight zero bytes after a served request read "uwsgi request received on a
    /// FastCGI socket", advice to change a socket that works.
    fn mid_stream(&self, e: ProtoError, buf: &[u8]) -> ProtoError {
        match e {
            ProtoError::WrongProtocol { .. } if !self.begun.is_empty() => {
                ProtoError::FcgiVersion(buf.first().copied().unwrap_or(0))
            }
            e => e,
        }
    }

    /// The server has written END_REQUEST for `id`, or given up on it: the id is free.
    /// If its body was still coming (and the peer did not abort it), the rest of it is
    /// late ([`late_body`](Self::late_body)).
    pub fn finished(&mut self, id: u16) {
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        let body_coming = matches!(r.phase, Phase::Stdin | Phase::Refused);
        let late = &mut self.begun.late;
        if body_coming && !r.aborted && !r.begun_again && late.len() < self.limits.max_reqs {
            late.push(id);
        }
    }

    /// True while the rest of a finished request's body may still come (kept across
    /// the parsers that read the connection, with its begun ids): the peer is in the
    /// middle of sending it. nginx sends a request's whole body before it reads the
    /// answer, and closes the connection anywhere in it after an early answer.
    pub fn late_body(&self) -> bool {
        !self.begun.late.is_empty()
    }

    /// The ids whose finished requests' bodies may still come ([`late_body`](Self::late_body)).
    pub fn late_ids(&self) -> &[u16] {
        self.begun.late()
    }

    /// `partial` (what is left of the connection's input: less than a record) may be
    /// the start of a STDIN record of a late body: its header says STDIN for a late id,
    /// or is too short to say. A partial record of anything else is not.
    pub fn late_record(&self, partial: &[u8]) -> bool {
        let late = &self.begun.late;
        if late.is_empty() {
            return false;
        }
        match partial {
            [version, kind, hi, lo, ..] => {
                *version == 1 && *kind == STDIN && late.contains(&u16::from_be_bytes([*hi, *lo]))
            }
            _ => true,
        }
    }

    /// Request `id`'s late body has ended (its empty STDIN record), or its id is begun
    /// again.
    fn late_over(&mut self, id: u16) {
        let late = &mut self.begun.late;
        if let Some(i) = late.iter().position(|&l| l == id) {
            late.swap_remove(i);
        }
    }

    /// Bytes of PARAMS streams still being assembled (counted against the server's
    /// input budget: a client can open many requests and never end their PARAMS).
    pub fn params_held(&self) -> usize {
        self.requests
            .values()
            .map(|r| match &r.phase {
                Phase::Params(block, _) => block.len(),
                _ => 0,
            })
            .sum()
    }

    /// Takes over request `id`, begun elsewhere (a fast path that read the whole request
    /// itself): active, PARAMS and STDIN already over, so a later ABORT_REQUEST for it
    /// gives [`Event::Abort`] and a BEGIN_REQUEST reusing it is refused.
    pub fn adopt(&mut self, id: u16, keep_conn: bool) {
        self.begun.mark(id);
        self.requests.insert(
            id,
            Request {
                keep_conn,
                phase: Phase::Done,
                aborted: false,
                begun_again: false,
            },
        );
    }

    /// True once a request without KEEP_CONN refused or ended here has ended the
    /// connection: send the replies (and answer what still runs), then close.
    pub fn close_after_replies(&self) -> bool {
        self.close_after_replies
    }

    /// True while some request's PARAMS stream has not ended (the app cannot start).
    pub fn awaiting_params(&self) -> bool {
        self.requests
            .values()
            .any(|r| matches!(r.phase, Phase::Params(..) | Phase::Dropping { .. }))
    }

    /// Requests begun and not finished.
    pub fn active(&self) -> usize {
        self.requests.len()
    }

    /// True when `id` is active.
    pub fn is_active(&self, id: u16) -> bool {
        self.requests.contains_key(&id)
    }

    fn record(
        &mut self,
        kind: u8,
        id: u16,
        content: Bytes,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtoError> {
        if id == 0 {
            // Management records (§2.7).
            match kind {
                BEGIN_REQUEST => {
                    return Err(ProtoError::FcgiOutOfOrder {
                        id,
                        what: "BEGIN_REQUEST with the management id 0",
                    })
                }
                GET_VALUES => reply(events, |out| {
                    encode_get_values_result(out, &content, &self.limits.values)
                }),
                _ => reply(events, |out| encode_unknown_type(out, kind)),
            }
            return Ok(());
        }
        match kind {
            BEGIN_REQUEST => self.begin(id, &content, events)?,
            ABORT_REQUEST => self.abort(id, events),
            PARAMS => self.params(id, content, events)?,
            STDIN => self.stdin(id, content, events)?,
            // DATA belongs to the Filter role, never begun here; GET_VALUES is known but
            // only meaningful on id 0.
            DATA => {
                if !self.is_active(id) {
                    self.ignored(id);
                }
            }
            GET_VALUES => {}
            _ => reply(events, |out| encode_unknown_type(out, kind)),
        }
        Ok(())
    }

    fn begin(
        &mut self,
        id: u16,
        content: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ProtoError> {
        let begin = parse_begin(content)?;
        self.begun.mark(id);
        // A finished request's id begun anew: the peer is done with its old body (§2.9:
        // the front server chooses and reuses ids).
        if !self.begun.late.is_empty() {
            self.late_over(id);
        }
        if let Some(request) = self.requests.get_mut(&id) {
            // §2.9: a BEGIN_REQUEST for an active id is a protocol error. The spec says
            // no more; the least it can cost is that id: the request the front server
            // no longer knows ends (or, whole already, is answered), the rest of that
            // id's records are ignored until then, the other requests go on.
            let what = match request.phase {
                Phase::Params(..) | Phase::Dropping { .. } => {
                    let keep_conn = request.keep_conn;
                    self.requests.remove(&id);
                    reply(events, |out| {
                        encode_end_request(out, id, 0, ProtocolStatus::RequestComplete)
                    });
                    self.ended_here(keep_conn);
                    BegunAgain::Ended
                }
                // regression (probe 374): reported as `Ignored` ("it is answered"), and
                // the new request was never answered.
                _ if request.aborted => {
                    request.begun_again = true;
                    BegunAgain::AfterAbort
                }
                Phase::Stdin => {
                    request.aborted = true;
                    events.push(Event::Abort { id });
                    BegunAgain::Aborted
                }
                // Answered (or refused) already: it goes on to its end.
                Phase::Done | Phase::Refused => {
                    request.begun_again = true;
                    BegunAgain::Ignored
                }
            };
            if self.begun_again.len() < 16 {
                self.begun_again.push((id, what));
            }
            return Ok(());
        }
        let refused = if begin.role != ROLE_RESPONDER {
            Some(ProtocolStatus::UnknownRole)
        } else if self.active() >= self.limits.max_reqs {
            if self.limits.max_reqs <= 1 && self.active() > 0 {
                Some(ProtocolStatus::CantMpxConn)
            } else {
                Some(ProtocolStatus::Overloaded)
            }
        } else {
            None
        };
        match refused {
            Some(status) => {
                reply(events, |out| encode_end_request(out, id, 0, status));
                match &mut self.refused {
                    Some(r) => r.count = r.count.saturating_add(1),
                    None => {
                        self.refused = Some(Refusals {
                            first: (id, status),
                            count: 1,
                        })
                    }
                }
                // KEEP_CONN unset (§2.3): the connection ends with this END_REQUEST,
                // unless other requests still run on it.
                if !begin.keep_conn && self.active() == 0 {
                    self.close_after_replies = true;
                }
            }
            None => {
                self.requests.insert(
                    id,
                    Request {
                        keep_conn: begin.keep_conn,
                        phase: Phase::Params(Block::Empty, 0),
                        aborted: false,
                        begun_again: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// A request the parser ended itself (its END_REQUEST among the replies, its app
    /// never called): at a BEGIN_REQUEST for its id, or an FCGI_ABORT_REQUEST before its
    /// PARAMS ended. Without KEEP_CONN the connection ends with that END_REQUEST (§2.3),
    /// unless other requests still run on it, as for a refused BEGIN_REQUEST.
    // regression (sec L4): BEGIN_REQUEST twice for one id without KEEP_CONN sent
    // END_REQUEST at once but held the connection open until --head-timeout.
    fn ended_here(&mut self, keep_conn: bool) {
        if !keep_conn && self.active() == 0 {
            self.close_after_replies = true;
        }
    }

    fn abort(&mut self, id: u16, events: &mut Vec<Event>) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        if request.aborted || matches!(request.phase, Phase::Refused) {
            return;
        }
        if let Phase::Params(..) | Phase::Dropping { .. } = request.phase {
            // The app never saw this request: end it here, so the server never hears of
            // an id it has no app for (§2.8: answer END_REQUEST, REQUEST_COMPLETE).
            // Without FCGI_KEEP_CONN the connection ends with it. regression (probe
            // 389): it stayed open until --head-timeout ("no FastCGI request within").
            let keep_conn = request.keep_conn;
            self.requests.remove(&id);
            reply(events, |out| {
                encode_end_request(out, id, 0, ProtocolStatus::RequestComplete)
            });
            self.ended_here(keep_conn);
            return;
        }
        request.aborted = true;
        events.push(Event::Abort { id });
    }

    fn params(
        &mut self,
        id: u16,
        content: Bytes,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtoError> {
        let Some(request) = self.requests.get_mut(&id) else {
            self.ignored(id);
            return Ok(());
        };
        if request.aborted || request.begun_again {
            return Ok(());
        }
        let (block, pair_at) = match &mut request.phase {
            Phase::Params(block, pair_at) => (block, pair_at),
            Phase::Dropping { size, logged } if content.is_empty() => {
                let (size, logged) = (*size, Bytes::from(std::mem::take(logged)));
                request.phase = Phase::Stdin;
                events.push(Event::ParamsTooLarge {
                    id,
                    keep_conn: request.keep_conn,
                    size,
                    limit: self.limits.max_params,
                    logged,
                    pair: false,
                });
                return Ok(());
            }
            Phase::Refused => return Ok(()),
            Phase::Dropping { size, logged } => {
                *size = size.saturating_add(content.len());
                super::keep_logged_pairs(&content, logged);
                return Ok(());
            }
            _ => {
                return Err(ProtoError::FcgiOutOfOrder {
                    id,
                    what: "PARAMS after the end of PARAMS",
                })
            }
        };
        if content.is_empty() {
            let params = std::mem::take(block).freeze();
            request.phase = Phase::Stdin;
            events.push(Event::Params {
                id,
                keep_conn: request.keep_conn,
                params,
            });
            return Ok(());
        }
        // A pair that alone is over the limit is refused as soon as its lengths are
        // here: the rest of its stream need not be waited for (a peer that announces
        // a 2 GiB value and stops held the connection until --head-timeout).
        // regression (sec, session 7): a PARAMS record announcing a value of 2^31 - 1
        // bytes was answered only at --head-timeout, with a close.
        let max = self.limits.max_params;
        match super::pair_over_limit([block.bytes(), &content], *pair_at, max) {
            Ok(next) => *pair_at = next,
            Err(size) => {
                let mut logged = Vec::new();
                super::keep_logged_pairs(block.bytes(), &mut logged);
                super::keep_logged_pairs(&content, &mut logged);
                request.phase = Phase::Refused;
                events.push(Event::ParamsTooLarge {
                    id,
                    keep_conn: request.keep_conn,
                    size,
                    limit: max,
                    logged: Bytes::from(logged),
                    pair: true,
                });
                return Ok(());
            }
        }
        // block ≤ max_params and content ≤ 65535, yet stay honest about overflow.
        let size = block.len().saturating_add(content.len());
        if size > self.limits.max_params {
            // Not fatal: the front server framed it right (Apache sends PARAMS in 16 KiB
            // records), the request is only too large. Its end is answered 431.
            let mut logged = Vec::new();
            super::keep_logged_pairs(&std::mem::take(block).freeze(), &mut logged);
            super::keep_logged_pairs(&content, &mut logged);
            request.phase = Phase::Dropping { size, logged };
            return Ok(());
        }
        block.push(content);
        Ok(())
    }

    fn stdin(&mut self, id: u16, data: Bytes, events: &mut Vec<Event>) -> Result<(), ProtoError> {
        let Some(request) = self.requests.get_mut(&id) else {
            if data.is_empty() {
                self.late_over(id);
            }
            self.ignored(id);
            return Ok(());
        };
        if request.aborted || request.begun_again {
            return Ok(());
        }
        match request.phase {
            Phase::Params(..) | Phase::Dropping { .. } => Err(ProtoError::FcgiOutOfOrder {
                id,
                what: "STDIN before the end of PARAMS",
            }),
            Phase::Refused => Ok(()),
            Phase::Stdin if data.is_empty() => {
                request.phase = Phase::Done;
                events.push(Event::StdinEnd { id });
                Ok(())
            }
            Phase::Stdin => {
                events.push(Event::Stdin { id, data });
                Ok(())
            }
            Phase::Done => Ok(()),
        }
    }
}

/// Appends a reply to the last event if it is one, else pushes a new `Reply`.
fn reply(events: &mut Vec<Event>, encode: impl FnOnce(&mut Vec<u8>)) {
    if let Some(Event::Reply(out)) = events.last_mut() {
        encode(out);
    } else {
        let mut out = Vec::new();
        encode(&mut out);
        events.push(Event::Reply(out));
    }
}

/// One whole simple request, as [`whole_request`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeRequest {
    pub id: u16,
    pub keep_conn: bool,
    /// The concatenated PARAMS block, not yet split.
    pub params: Bytes,
    /// The whole body.
    pub stdin: Bytes,
}

/// Fast path: `buf` holds exactly one whole simple request and nothing more.
///
/// That is BEGIN_REQUEST (RESPONDER, id ≠ 0), PARAMS records of that id ending with an
/// empty one (at most `max_params` bytes), STDIN records of that id ending with an empty
/// one (at most `max_stdin` bytes), and no byte after. Anything else (a partial request,
/// other records or ids, trailing bytes, a limit passed, any error) is `None`: feed the
/// bytes to a [`ConnParser`] instead, which gives the same events or the error.
pub fn whole_request(buf: &[u8], max_params: usize, max_stdin: usize) -> Option<WholeRequest> {
    let (pos, begin) = parse_record(buf).ok()??;
    if begin.kind != BEGIN_REQUEST || begin.request_id == 0 {
        return None;
    }
    let id = begin.request_id;
    let begin = parse_begin(begin.content).ok()?;
    if begin.role != ROLE_RESPONDER {
        return None;
    }
    let (params, pos) = whole_stream(buf, pos, PARAMS, id, max_params)?;
    let (stdin, pos) = whole_stream(buf, pos, STDIN, id, max_stdin)?;
    (pos == buf.len()).then_some(WholeRequest {
        id,
        keep_conn: begin.keep_conn,
        params,
        stdin,
    })
}

/// The stream of `kind` records for `id` starting at `pos`, through its empty record:
/// the joined content and the offset after it.
fn whole_stream(
    buf: &[u8],
    mut pos: usize,
    kind: u8,
    id: u16,
    limit: usize,
) -> Option<(Bytes, usize)> {
    let mut data = Vec::new();
    loop {
        let (len, record) = parse_record(buf.get(pos..)?).ok()??;
        if record.kind != kind || record.request_id != id {
            return None;
        }
        pos += len;
        if record.content.is_empty() {
            return Some((Bytes::from(data), pos));
        }
        if data.len() + record.content.len() > limit {
            return None;
        }
        // The first extend allocates exactly one record's worth: one copy, no regrowth,
        // in the common single-record case.
        data.extend_from_slice(record.content);
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    const ID: u16 = 1;

    fn values() -> Values {
        Values {
            max_conns: 10,
            max_reqs: 1,
            mpxs_conns: false,
        }
    }

    fn limits(max_params: usize, max_reqs: usize) -> ConnLimits {
        ConnLimits {
            max_params,
            max_reqs,
            values: values(),
        }
    }

    fn parser() -> ConnParser {
        ConnParser::new(limits(4096, 1))
    }

    fn params_block() -> Vec<u8> {
        let mut block = Vec::new();
        encode_pairs(
            &[
                (b"REQUEST_METHOD", b"POST"),
                (b"PATH_INFO", b"/hello"),
                (b"QUERY_STRING", b""),
            ],
            &mut block,
        );
        block
    }

    /// BEGIN, params in one record, body in one record, both streams ended.
    fn simple_request(id: u16, keep_conn: bool, params: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_begin_request(&mut out, id, ROLE_RESPONDER, keep_conn);
        encode_stream(&mut out, PARAMS, id, params);
        encode_record(&mut out, PARAMS, id, &[]);
        encode_stream(&mut out, STDIN, id, body);
        encode_record(&mut out, STDIN, id, &[]);
        out
    }

    fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, kind, id, content);
        out
    }

    fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
        let mut out = Vec::new();
        encode_begin_request(&mut out, id, role, keep_conn);
        out
    }

    fn end_request(id: u16, status: ProtocolStatus) -> Vec<u8> {
        let mut out = Vec::new();
        encode_end_request(&mut out, id, 0, status);
        out
    }

    fn unknown_type(kind: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_unknown_type(&mut out, kind);
        out
    }

    /// Feeds `bytes` in one go; returns the events, or the error, and asserts nothing
    /// complete is left behind.
    fn feed(p: &mut ConnParser, bytes: &[u8]) -> Result<Vec<Event>, ProtoError> {
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        p.feed(&mut buf, &mut events)?;
        assert_eq!(parse_record(&buf), Ok(None), "a complete record was left");
        Ok(events)
    }

    fn params_event(id: u16, keep_conn: bool, params: &[u8]) -> Event {
        Event::Params {
            id,
            keep_conn,
            params: Bytes::copy_from_slice(params),
        }
    }

    fn stdin_event(id: u16, data: &[u8]) -> Event {
        Event::Stdin {
            id,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// A request finished before its body ended leaves the rest of it late until its
    /// empty STDIN record, or until its id is begun anew; one finished with its body
    /// whole, or aborted, does not.
    #[test]
    fn the_rest_of_a_body_answered_early_is_late_until_its_end() {
        let head = |id| {
            let mut out = begin(id, ROLE_RESPONDER, true);
            out.extend(record(PARAMS, id, &params_block()));
            out.extend(record(PARAMS, id, b""));
            out
        };
        let mut p = parser();
        let mut bytes = head(1);
        bytes.extend(record(STDIN, 1, b"part"));
        feed(&mut p, &bytes).unwrap();
        p.finished(1);
        assert!(p.late_body());
        assert_eq!(feed(&mut p, &record(STDIN, 1, b"more")).unwrap(), vec![]);
        assert!(p.late_body(), "still coming");
        assert_eq!(feed(&mut p, &record(STDIN, 1, b"")).unwrap(), vec![]);
        assert!(!p.late_body(), "its end came");

        // Carried to the connection's next parser (a parked connection read again).
        let mut bytes = head(1);
        bytes.extend(record(STDIN, 1, b"part"));
        feed(&mut p, &bytes).unwrap();
        p.finished(1);
        let mut next = parser();
        next.set_begun(p.take_begun());
        assert!(next.late_body());
        // What a partial record left at a close may be.
        let stdin_1 = record(STDIN, 1, b"rest");
        assert!(next.late_record(&stdin_1[..5]), "the rest of id 1's body");
        assert!(next.late_record(&stdin_1[..3]), "too short to say");
        assert!(
            !next.late_record(&record(STDIN, 2, b"x")[..5]),
            "another id"
        );
        assert!(
            !next.late_record(&begin(1, ROLE_RESPONDER, true)[..5]),
            "a new request"
        );
        assert_eq!(feed(&mut next, &record(STDIN, 1, b"")).unwrap(), vec![]);
        assert!(!next.late_body());
        assert!(!next.late_record(&stdin_1[..5]), "no late body any more");
        p.set_begun(next.take_begun());

        // Begun anew before its end: the old body is over.
        feed(&mut p, &head(1)).unwrap();
        p.finished(1);
        assert!(p.late_body());
        feed(&mut p, &head(1)).unwrap();
        assert!(!p.late_body());
        p.finished(1);
        p.begun.late.clear();

        // Whole, or aborted by the peer: nothing is late.
        feed(&mut p, &simple_request(1, true, &params_block(), b"body")).unwrap();
        p.finished(1);
        assert!(!p.late_body());
        let mut bytes = head(1);
        bytes.extend(record(STDIN, 1, b"part"));
        bytes.extend(record(ABORT_REQUEST, 1, b""));
        feed(&mut p, &bytes).unwrap();
        p.finished(1);
        assert!(!p.late_body());
    }

    #[test]
    fn accepts_a_simple_request() {
        let block = params_block();
        let mut p = parser();
        let events = feed(&mut p, &simple_request(ID, true, &block, b"a=1")).unwrap();
        assert_eq!(
            events,
            vec![
                params_event(ID, true, &block),
                stdin_event(ID, b"a=1"),
                Event::StdinEnd { id: ID },
            ]
        );
        assert!(p.is_active(ID));
        assert_eq!(p.active(), 1);
        p.finished(ID);
        assert!(!p.is_active(ID));
        assert_eq!(p.active(), 0);
    }

    #[test]
    fn accepts_a_request_with_no_params_and_no_body() {
        let mut p = parser();
        let events = feed(&mut p, &simple_request(7, false, &[], &[])).unwrap();
        assert_eq!(
            events,
            vec![params_event(7, false, &[]), Event::StdinEnd { id: 7 }]
        );
    }

    #[test]
    fn waits_on_every_prefix() {
        let block = params_block();
        let bytes = simple_request(ID, false, &block, b"body");
        let params_end = 16 + record(PARAMS, ID, &block).len() + 8;
        let all = feed(&mut parser(), &bytes).unwrap();
        for i in 0..bytes.len() {
            let mut p = parser();
            let mut buf = BytesMut::from(&bytes[..i]);
            let mut events = Vec::new();
            p.feed(&mut buf, &mut events).unwrap();
            if i < params_end {
                assert!(events.is_empty(), "prefix {i}: {events:?}");
            }
            // What has been seen is a prefix of what the whole gives; the rest waits.
            assert_eq!(events[..], all[..events.len()], "prefix {i}");
            assert!(events.len() < all.len(), "prefix {i}");
            // Feeding the rest completes the same events.
            buf.extend_from_slice(&bytes[i..]);
            p.feed(&mut buf, &mut events).unwrap();
            assert_eq!(events, all, "prefix {i}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn accepts_a_request_one_byte_at_a_time() {
        let block = params_block();
        let bytes = simple_request(ID, true, &block, b"0123456789");
        let mut p = parser();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for &b in &bytes {
            buf.extend_from_slice(&[b]);
            p.feed(&mut buf, &mut events).unwrap();
        }
        assert_eq!(events, feed(&mut parser(), &bytes).unwrap());
    }

    #[test]
    fn leaves_a_partial_record_in_the_buffer() {
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        let next = record(PARAMS, ID, b"\x01\x01ab");
        bytes.extend_from_slice(&next[..5]);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut p = parser();
        p.feed(&mut buf, &mut Vec::new()).unwrap();
        assert_eq!(buf[..], next[..5]);
        assert!(p.is_active(ID));
    }

    #[test]
    fn honours_padding_of_every_length() {
        for padding in 0..=255u8 {
            let mut bytes = begin(ID, ROLE_RESPONDER, false);
            // version 1, PARAMS, id 1, content 4, `padding`, reserved; "K" = "v"
            bytes.extend_from_slice(&[1, PARAMS, 0, 1, 0, 4, padding, 0, 1, 1, b'K', b'v']);
            bytes.extend(std::iter::repeat_n(0xaa, usize::from(padding)));
            bytes.extend_from_slice(&record(PARAMS, ID, &[]));
            let events = feed(&mut parser(), &bytes).unwrap();
            assert_eq!(events, vec![params_event(ID, false, b"\x01\x01Kv")]);
        }
    }

    /// Feeds BEGIN, then `block` cut into the given record contents, then the empty PARAMS.
    fn params_in_records(p: &mut ConnParser, pieces: &[&[u8]]) -> Result<Vec<Event>, ProtoError> {
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        for piece in pieces {
            encode_stream(&mut bytes, PARAMS, ID, piece);
        }
        encode_record(&mut bytes, PARAMS, ID, &[]);
        feed(p, &bytes)
    }

    fn params_of(events: &[Event]) -> Bytes {
        match events {
            [Event::Params { params, .. }] => params.clone(),
            other => panic!("expected one Params event, got {other:?}"),
        }
    }

    #[test]
    fn joins_pairs_split_across_params_records_at_every_position() {
        let v127 = vec![b'x'; 127];
        let v128 = vec![b'y'; 128];
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"SHORT", b"1"),
            (b"HTTP_X_127", &v127),
            (&v128, b"name of 128"),
            (b"HTTP_X_128", &v128),
            (b"EMPTY", b""),
        ];
        let mut block = Vec::new();
        encode_pairs(&pairs, &mut block);
        for cut in 1..block.len() {
            let mut p = parser();
            let params =
                params_of(&params_in_records(&mut p, &[&block[..cut], &block[cut..]]).unwrap());
            assert_eq!(params[..], block[..], "cut {cut}");
            let ranges = parse_pairs(&params).unwrap();
            assert_eq!(ranges.len(), pairs.len());
        }
        // One byte per record.
        let pieces: Vec<&[u8]> = block.chunks(1).collect();
        let params = params_of(&params_in_records(&mut parser(), &pieces).unwrap());
        assert_eq!(params[..], block[..]);
    }

    #[test]
    fn joins_a_value_longer_than_one_record() {
        let v70000: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let mut block = Vec::new();
        encode_pairs(&[(b"HTTP_COOKIE", &v70000), (b"A", b"b")], &mut block);
        for cut in [1, 2, 5, 6, 17, 65535, 65536, 70_000, block.len() - 1] {
            let mut p = ConnParser::new(limits(1 << 20, 1));
            let params =
                params_of(&params_in_records(&mut p, &[&block[..cut], &block[cut..]]).unwrap());
            assert_eq!(params[..], block[..], "cut {cut}");
            let ranges = parse_pairs(&params).unwrap();
            let (name, value) = &ranges[0];
            assert_eq!(
                &params[name.start as usize..name.end as usize],
                b"HTTP_COOKIE"
            );
            assert_eq!(params[value.start as usize..value.end as usize], v70000[..]);
        }
    }

    #[test]
    fn shares_the_read_buffer_for_stdin_and_single_record_params() {
        let block = params_block();
        let bytes = simple_request(ID, false, &block, b"shared body");
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let range = base..base + bytes.len();
        let mut events = Vec::new();
        parser().feed(&mut buf, &mut events).unwrap();
        let [Event::Params { params, .. }, Event::Stdin { data, .. }, Event::StdinEnd { .. }] =
            &events[..]
        else {
            panic!("{events:?}");
        };
        assert!(range.contains(&(params.as_ptr() as usize)));
        assert!(range.contains(&(data.as_ptr() as usize)));
    }

    #[test]
    fn drops_params_over_the_limit_and_reports_them_at_their_end() {
        // 50 empty pairs (empty names are skipped): framed right, each 2 bytes.
        let block = vec![0u8; 100];
        // Exactly at the limit, in one record and in two.
        let events = params_in_records(&mut ConnParser::new(limits(100, 1)), &[&block]).unwrap();
        assert_eq!(params_of(&events).len(), 100);
        let events = params_in_records(
            &mut ConnParser::new(limits(100, 1)),
            &[&block[..60], &block[60..]],
        )
        .unwrap();
        assert_eq!(params_of(&events).len(), 100);
        // One byte over, in one record and in two: not fatal, reported at the end with
        // the whole size.
        let too_large = Ok(vec![Event::ParamsTooLarge {
            id: ID,
            keep_conn: false,
            size: 100,
            limit: 99,
            logged: Bytes::new(),
            pair: false,
        }]);
        let mut p = ConnParser::new(limits(99, 1));
        assert_eq!(params_in_records(&mut p, &[&block]), too_large);
        let mut p = ConnParser::new(limits(99, 1));
        assert_eq!(
            params_in_records(&mut p, &[&block[..60], &block[60..]]),
            too_large
        );
        // Past the limit nothing is held; the body follows as for any request, and a
        // keep-conn connection goes on with the next id once this one is finished.
        let mut p = ConnParser::new(limits(99, 2));
        let mut bytes = begin(ID, ROLE_RESPONDER, true);
        encode_record(&mut bytes, PARAMS, ID, &block[..60]);
        encode_record(&mut bytes, PARAMS, ID, &block[60..]);
        encode_record(&mut bytes, PARAMS, ID, &block);
        assert_eq!(feed(&mut p, &bytes), Ok(vec![]));
        assert_eq!(p.params_held(), 0);
        assert!(p.awaiting_params());
        let mut bytes = record(PARAMS, ID, &[]);
        bytes.extend(record(STDIN, ID, b"body"));
        bytes.extend(record(STDIN, ID, &[]));
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events[0],
            Event::ParamsTooLarge {
                id: ID,
                keep_conn: true,
                size: 200,
                limit: 99,
                logged: Bytes::new(),
                pair: false,
            }
        );
        assert_eq!(events.len(), 3);
        p.finished(ID);
        let small = params_block();
        let events = feed(&mut p, &simple_request(2, true, &small, b"")).unwrap();
        assert_eq!(events[0], params_event(2, true, &small));
        // An abort while its PARAMS are being dropped ends it at once, as before the limit.
        let mut p = ConnParser::new(limits(99, 1));
        let mut bytes = begin(ID, ROLE_RESPONDER, true);
        encode_record(&mut bytes, PARAMS, ID, &block);
        encode_record(&mut bytes, ABORT_REQUEST, ID, &[]);
        assert_eq!(
            feed(&mut p, &bytes),
            Ok(vec![Event::Reply(end_request(
                ID,
                ProtocolStatus::RequestComplete
            ))])
        );
        assert_eq!(p.active(), 0);
    }

    #[test]
    fn refuses_a_pair_over_the_limit_as_soon_as_its_lengths_come() {
        // A good pair, then a value of 2^31 - 1 bytes announced (its name "NAME").
        let mut block = Vec::new();
        encode_pairs(&[(b"REQUEST_METHOD", b"GET")], &mut block);
        let mut logged = Vec::new();
        encode_pairs(&[(b"REQUEST_METHOD", b"GET")], &mut logged);
        block.extend_from_slice(&[4, 0xff, 0xff, 0xff, 0xff]);
        block.extend_from_slice(b"NAME");
        let refused = |keep_conn| Event::ParamsTooLarge {
            id: ID,
            keep_conn,
            size: 5 + 4 + 0x7fff_ffff,
            limit: 4096,
            logged: Bytes::from(logged.clone()),
            pair: true,
        };
        // Lengths whole in the first record, or cut between two: refused with the
        // record that completes them, the stream's end never waited for.
        for cut in [
            block.len(),
            block.len() - 4,
            block.len() - 6,
            block.len() - 8,
        ] {
            let mut p = parser();
            let mut bytes = begin(ID, ROLE_RESPONDER, true);
            encode_record(&mut bytes, PARAMS, ID, &block[..cut]);
            let first = feed(&mut p, &bytes).unwrap();
            let mut bytes = Vec::new();
            if cut < block.len() {
                encode_record(&mut bytes, PARAMS, ID, &block[cut..]);
            }
            let mut events = first;
            events.extend(feed(&mut p, &bytes).unwrap());
            assert_eq!(events, vec![refused(true)], "cut {cut}");
            assert!(!p.awaiting_params() && p.params_held() == 0, "cut {cut}");
            // The rest of it (more PARAMS, their end, STDIN, an abort) is ignored, and
            // no error.
            let mut bytes = record(PARAMS, ID, &[b'v'; 1000]);
            bytes.extend(record(PARAMS, ID, &[]));
            bytes.extend(record(STDIN, ID, b"body"));
            bytes.extend(record(STDIN, ID, &[]));
            bytes.extend(record(ABORT_REQUEST, ID, &[]));
            assert_eq!(feed(&mut p, &bytes), Ok(vec![]), "cut {cut}");
            // Answered (431, END_REQUEST): the connection serves on.
            p.finished(ID);
            let small = params_block();
            let events = feed(&mut p, &simple_request(ID, true, &small, b"")).unwrap();
            assert_eq!(events[0], params_event(ID, true, &small));
            assert_eq!(p.take_stray(), None);
        }
        // A 4-byte name length, in the records of a request without KEEP_CONN.
        let mut p = parser();
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        encode_record(&mut bytes, PARAMS, ID, &[0x80, 0, 0x10, 1, 0, b'x']);
        let events = feed(&mut p, &bytes).unwrap();
        let [Event::ParamsTooLarge {
            size,
            pair: true,
            keep_conn: false,
            ..
        }] = &events[..]
        else {
            panic!("{events:?}");
        };
        assert_eq!(*size, 5 + 0x1001);
        // A pair that fits alone is not refused early, however near the limit it
        // starts: the stream is dropped as it passes the limit, and answered at its end.
        let mut p = ConnParser::new(limits(100, 1));
        let mut block = vec![0u8; 90];
        encode_pairs(&[(b"K", &[b'v'; 50])], &mut block);
        let events = params_in_records(&mut p, &[&block]).unwrap();
        assert!(
            matches!(
                events[..],
                [Event::ParamsTooLarge {
                    size: 143,
                    pair: false,
                    ..
                }]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn whole_request_takes_a_pair_over_the_limit_that_its_assembly_refuses() {
        // The fast path does not walk the pairs: the block is within the limit, so it
        // is taken, but its pairs do not parse (the pair runs past the block), and
        // the server's assembly leaves it to the parser, which refuses it early.
        let block = [4u8, 0xff, 0xff, 0xff, 0xff, b'N', b'A', b'M', b'E'];
        let bytes = simple_request(ID, false, &block, b"");
        let whole = whole_request(&bytes, 4096, 4096).unwrap();
        assert!(matches!(
            parse_pairs(&whole.params),
            Err(ProtoError::FcgiPairOverrun { .. })
        ));
        let events = feed(&mut parser(), &bytes).unwrap();
        assert!(
            matches!(events[..], [Event::ParamsTooLarge { pair: true, .. }]),
            "{events:?}"
        );
    }

    #[test]
    fn counts_the_params_limit_per_request() {
        let block = vec![0u8; 80];
        let mut p = ConnParser::new(limits(100, 2));
        let mut bytes = begin(1, ROLE_RESPONDER, false);
        bytes.extend(begin(2, ROLE_RESPONDER, false));
        bytes.extend(record(PARAMS, 1, &block));
        bytes.extend(record(PARAMS, 2, &block));
        bytes.extend(record(PARAMS, 1, &[]));
        bytes.extend(record(PARAMS, 2, &[]));
        assert_eq!(feed(&mut p, &bytes).unwrap().len(), 2);
    }

    #[test]
    fn rejects_a_wrong_version_after_good_records() {
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        let mut bad = record(PARAMS, ID, &[]);
        bad[0] = 2;
        bytes.extend(bad);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut p = parser();
        assert_eq!(
            p.feed(&mut buf, &mut Vec::new()),
            Err(ProtoError::FcgiVersion(2))
        );
        assert!(p.is_active(ID), "the good record before it was handled");
        assert_eq!(
            feed(&mut parser(), &[0, 1, 0, 1, 0, 0, 0, 0]),
            Err(ProtoError::FcgiVersion(0))
        );
        // What reads as another protocol's request is one only at the start.
        let uwsgi = [0u8, 0x20, 0, 0, 9, 0, 0, 0];
        assert!(matches!(
            feed(&mut parser(), &uwsgi),
            Err(ProtoError::WrongProtocol { .. })
        ));
        let mut after = begin(ID, ROLE_RESPONDER, true);
        after.extend(uwsgi);
        assert_eq!(feed(&mut parser(), &after), Err(ProtoError::FcgiVersion(0)));
    }

    #[test]
    fn rejects_http_text() {
        for text in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /api HTTP/1.0\r\n",
        ] {
            assert_eq!(feed(&mut parser(), text), Err(ProtoError::HttpOnFastcgi));
        }
        // Three bytes of it: not decided yet.
        assert_eq!(feed(&mut parser(), b"GET"), Ok(vec![]));
        // Uppercase bytes that are no method word: a wrong version.
        assert_eq!(
            feed(&mut parser(), b"GARBAGEGARBAGE\x01\x01\0\x01"),
            Err(ProtoError::FcgiVersion(b'G'))
        );
    }

    #[test]
    fn rejects_a_begin_body_that_is_not_8_bytes() {
        for len in [0usize, 7, 9] {
            let bytes = record(BEGIN_REQUEST, ID, &vec![0; len]);
            assert_eq!(
                feed(&mut parser(), &bytes),
                Err(ProtoError::FcgiBeginBody(len))
            );
        }
    }

    #[test]
    fn rejects_begin_on_the_management_id() {
        assert_eq!(
            feed(&mut parser(), &begin(0, ROLE_RESPONDER, false)),
            Err(ProtoError::FcgiOutOfOrder {
                id: 0,
                what: "BEGIN_REQUEST with the management id 0"
            })
        );
    }

    #[test]
    fn an_id_begun_again_costs_only_that_id_until_it_is_finished() {
        let block = params_block();
        // Before the end of its PARAMS: ended at once; what follows for the id is
        // ignored (the id is inactive), the other request goes on.
        let mut p = ConnParser::new(limits(4096, 4));
        feed(&mut p, &begin(ID, ROLE_RESPONDER, false)).unwrap();
        feed(&mut p, &begin(2, ROLE_RESPONDER, true)).unwrap();
        let mut again = begin(ID, ROLE_RESPONDER, true);
        again.extend(record(PARAMS, ID, &block));
        again.extend(record(PARAMS, ID, &[]));
        assert_eq!(
            feed(&mut p, &again).unwrap(),
            vec![Event::Reply(end_request(
                ID,
                ProtocolStatus::RequestComplete
            ))]
        );
        assert_eq!(p.take_begun_again(), vec![(ID, BegunAgain::Ended)]);
        assert!(!p.is_active(ID) && p.is_active(2));
        // While its body comes: aborted, the rest of the id's records ignored.
        let mut p = parser();
        feed(&mut p, &begin(ID, ROLE_RESPONDER, true)).unwrap();
        feed(&mut p, &record(PARAMS, ID, &block)).unwrap();
        feed(&mut p, &record(PARAMS, ID, &[])).unwrap();
        let mut again = begin(ID, ROLE_RESPONDER, true);
        again.extend(record(PARAMS, ID, &block));
        again.extend(record(STDIN, ID, b"x"));
        assert_eq!(feed(&mut p, &again).unwrap(), vec![Event::Abort { id: ID }]);
        assert_eq!(p.take_begun_again(), vec![(ID, BegunAgain::Aborted)]);
        // Aborted (FCGI_ABORT_REQUEST), its END_REQUEST not out yet: the id reused too
        // soon (the server closes the connection). regression (probe 374): reported
        // as whole and answered, and the new request was never answered.
        let mut p = parser();
        feed(&mut p, &begin(ID, ROLE_RESPONDER, true)).unwrap();
        feed(&mut p, &record(PARAMS, ID, &block)).unwrap();
        feed(&mut p, &record(PARAMS, ID, &[])).unwrap();
        assert_eq!(
            feed(&mut p, &record(ABORT_REQUEST, ID, &[])).unwrap(),
            vec![Event::Abort { id: ID }]
        );
        assert_eq!(
            feed(&mut p, &simple_request(ID, true, &block, b"")).unwrap(),
            vec![]
        );
        assert_eq!(p.take_begun_again(), vec![(ID, BegunAgain::AfterAbort)]);
        // Whole already: it goes on; the new request's records are ignored.
        let mut p = parser();
        feed(&mut p, &simple_request(ID, true, &block, b"")).unwrap();
        assert_eq!(
            feed(&mut p, &simple_request(ID, true, &block, b"body")).unwrap(),
            vec![]
        );
        assert_eq!(p.take_begun_again(), vec![(ID, BegunAgain::Ignored)]);
        assert!(p.is_active(ID));
        // Free again once finished: keep-alive reuses id 1.
        p.finished(ID);
        let events = feed(&mut p, &simple_request(ID, false, &block, b"x")).unwrap();
        assert_eq!(events[0], params_event(ID, false, &block));
    }

    // regression (sec L4): a request without KEEP_CONN that the parser ends itself (its
    // id begun again while its PARAMS came) got its END_REQUEST, but the connection
    // stayed open until --head-timeout: it closes after the replies, as after a
    // refused BEGIN_REQUEST, unless other requests run on it.
    #[test]
    fn a_request_ended_here_without_keep_conn_closes_the_connection_after_the_replies() {
        let block = params_block();
        for keep_conn in [false, true] {
            // Begun again while its PARAMS came.
            let mut p = parser();
            let mut bytes = begin(ID, ROLE_RESPONDER, keep_conn);
            bytes.extend(record(PARAMS, ID, &block));
            bytes.extend(begin(ID, ROLE_RESPONDER, keep_conn));
            bytes.extend(record(PARAMS, ID, &[]));
            bytes.extend(record(STDIN, ID, &[]));
            let events = feed(&mut p, &bytes).unwrap();
            assert_eq!(
                events,
                vec![Event::Reply(end_request(
                    ID,
                    ProtocolStatus::RequestComplete
                ))]
            );
            assert_eq!(p.take_begun_again(), vec![(ID, BegunAgain::Ended)]);
            assert_eq!(p.close_after_replies(), !keep_conn, "keep_conn {keep_conn}");
        }
        // Another request still runs on the connection: it goes on.
        let mut p = ConnParser::new(limits(4096, 4));
        let mut bytes = begin(2, ROLE_RESPONDER, true);
        bytes.extend(begin(ID, ROLE_RESPONDER, false));
        bytes.extend(begin(ID, ROLE_RESPONDER, false));
        feed(&mut p, &bytes).unwrap();
        assert!(!p.close_after_replies());
    }

    #[test]
    fn rejects_stdin_before_the_end_of_params() {
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        bytes.extend(record(PARAMS, ID, b"\x01\x01Kv"));
        bytes.extend(record(STDIN, ID, b"body"));
        assert_eq!(
            feed(&mut parser(), &bytes),
            Err(ProtoError::FcgiOutOfOrder {
                id: ID,
                what: "STDIN before the end of PARAMS"
            })
        );
        // Also the empty STDIN record.
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        bytes.extend(record(STDIN, ID, &[]));
        assert!(matches!(
            feed(&mut parser(), &bytes),
            Err(ProtoError::FcgiOutOfOrder { id: ID, .. })
        ));
    }

    #[test]
    fn rejects_params_after_the_end_of_params() {
        for extra in [&b"\x01\x01Kv"[..], b""] {
            let mut bytes = begin(ID, ROLE_RESPONDER, false);
            bytes.extend(record(PARAMS, ID, &[]));
            bytes.extend(record(PARAMS, ID, extra));
            assert_eq!(
                feed(&mut parser(), &bytes),
                Err(ProtoError::FcgiOutOfOrder {
                    id: ID,
                    what: "PARAMS after the end of PARAMS"
                })
            );
        }
    }

    #[test]
    fn answers_get_values() {
        let mut query = Vec::new();
        encode_pairs(
            &[
                (FCGI_MAX_CONNS, b""),
                (b"FCGI_NOT_A_VALUE", b""),
                (FCGI_MAX_REQS, b""),
                (FCGI_MPXS_CONNS, b""),
            ],
            &mut query,
        );
        let events = feed(&mut parser(), &record(GET_VALUES, 0, &query)).unwrap();
        let mut expected = Vec::new();
        encode_pairs(
            &[
                (FCGI_MAX_CONNS, b"10"),
                (FCGI_MAX_REQS, b"1"),
                (FCGI_MPXS_CONNS, b"0"),
            ],
            &mut expected,
        );
        assert_eq!(
            events,
            vec![Event::Reply(record(GET_VALUES_RESULT, 0, &expected))]
        );
    }

    #[test]
    fn answers_get_values_between_the_records_of_a_request() {
        let block = params_block();
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        bytes.extend(record(GET_VALUES, 0, b"\x0d\x00FCGI_MAX_REQS"));
        bytes.extend(record(PARAMS, ID, &block));
        bytes.extend(record(PARAMS, ID, &[]));
        let events = feed(&mut parser(), &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Reply(record(GET_VALUES_RESULT, 0, b"\x0d\x01FCGI_MAX_REQS1")),
                params_event(ID, false, &block),
            ]
        );
    }

    #[test]
    fn answers_unknown_types_on_the_management_id() {
        for kind in [
            0u8,
            ABORT_REQUEST,
            END_REQUEST,
            PARAMS,
            STDIN,
            DATA,
            GET_VALUES_RESULT,
            12,
            255,
        ] {
            let events = feed(&mut parser(), &record(kind, 0, b"whatever")).unwrap();
            assert_eq!(
                events,
                vec![Event::Reply(unknown_type(kind))],
                "type {kind}"
            );
        }
    }

    #[test]
    fn answers_types_a_web_server_never_sends_with_unknown_type() {
        for kind in [
            0u8,
            END_REQUEST,
            STDOUT,
            STDERR,
            GET_VALUES_RESULT,
            UNKNOWN_TYPE,
            12,
            200,
            255,
        ] {
            // On an active id and on an inactive one alike.
            let mut p = parser();
            feed(&mut p, &begin(ID, ROLE_RESPONDER, false)).unwrap();
            for id in [ID, 9] {
                let events = feed(&mut p, &record(kind, id, b"x")).unwrap();
                assert_eq!(
                    events,
                    vec![Event::Reply(unknown_type(kind))],
                    "type {kind}"
                );
            }
            assert!(p.is_active(ID));
        }
    }

    #[test]
    fn merges_consecutive_replies() {
        let mut bytes = record(42, 0, &[]);
        bytes.extend(record(43, 0, &[]));
        let events = feed(&mut parser(), &bytes).unwrap();
        let mut both = unknown_type(42);
        both.extend(unknown_type(43));
        assert_eq!(events, vec![Event::Reply(both)]);
    }

    #[test]
    fn answers_an_unknown_role_and_ignores_the_rest_of_that_request() {
        for role in [0, ROLE_AUTHORIZER, ROLE_FILTER, 0xffff] {
            let mut p = parser();
            let mut bytes = begin(ID, role, true);
            bytes.extend(record(PARAMS, ID, b"\x01\x01Kv"));
            bytes.extend(record(PARAMS, ID, &[]));
            bytes.extend(record(DATA, ID, b"filter data"));
            bytes.extend(record(STDIN, ID, &[]));
            let events = feed(&mut p, &bytes).unwrap();
            assert_eq!(
                events,
                vec![Event::Reply(end_request(ID, ProtocolStatus::UnknownRole))]
            );
            assert!(!p.is_active(ID));
            assert_eq!(p.active(), 0);
        }
    }

    #[test]
    fn answers_cant_mpx_conn_without_multiplexing() {
        let mut p = parser(); // max_reqs 1
        let mut bytes = begin(1, ROLE_RESPONDER, false);
        bytes.extend(begin(2, ROLE_RESPONDER, false));
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events,
            vec![Event::Reply(end_request(2, ProtocolStatus::CantMpxConn))]
        );
        assert!(p.is_active(1) && !p.is_active(2));
        // Once 1 is finished, 2 is welcome.
        p.finished(1);
        assert!(feed(&mut p, &begin(2, ROLE_RESPONDER, false))
            .unwrap()
            .is_empty());
        assert!(p.is_active(2));
    }

    #[test]
    fn answers_overloaded_past_max_reqs() {
        let mut p = ConnParser::new(limits(4096, 2));
        let mut bytes = Vec::new();
        for id in 1..=3 {
            bytes.extend(begin(id, ROLE_RESPONDER, true));
        }
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events,
            vec![Event::Reply(end_request(3, ProtocolStatus::Overloaded))]
        );
        assert_eq!(p.active(), 2);
        // max_reqs 0 takes nothing, and that is overload, not multiplexing.
        let events = feed(
            &mut ConnParser::new(limits(4096, 0)),
            &begin(1, ROLE_RESPONDER, false),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![Event::Reply(end_request(1, ProtocolStatus::Overloaded))]
        );
    }

    #[test]
    fn interleaves_two_multiplexed_requests() {
        let mut p = ConnParser::new(limits(4096, 2));
        let block = params_block();
        let (half1, half2) = block.split_at(10);
        let mut bytes = begin(1, ROLE_RESPONDER, true);
        bytes.extend(begin(2, ROLE_RESPONDER, false));
        bytes.extend(record(PARAMS, 2, half1));
        bytes.extend(record(PARAMS, 1, &block));
        bytes.extend(record(PARAMS, 2, half2));
        bytes.extend(record(PARAMS, 1, &[]));
        bytes.extend(record(STDIN, 1, b"one"));
        bytes.extend(record(PARAMS, 2, &[]));
        bytes.extend(record(STDIN, 2, b"two"));
        bytes.extend(record(STDIN, 2, &[]));
        bytes.extend(record(STDIN, 1, b"more"));
        bytes.extend(record(STDIN, 1, &[]));
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                params_event(1, true, &block),
                stdin_event(1, b"one"),
                params_event(2, false, &block),
                stdin_event(2, b"two"),
                Event::StdinEnd { id: 2 },
                stdin_event(1, b"more"),
                Event::StdinEnd { id: 1 },
            ]
        );
        p.finished(2);
        assert_eq!(
            (p.active(), p.is_active(1), p.is_active(2)),
            (1, true, false)
        );
    }

    #[test]
    fn reports_an_abort_once_and_drops_the_rest_of_that_request() {
        let mut p = parser();
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        bytes.extend(record(PARAMS, ID, &[]));
        bytes.extend(record(STDIN, ID, b"part"));
        bytes.extend(record(ABORT_REQUEST, ID, &[]));
        bytes.extend(record(STDIN, ID, b"late"));
        bytes.extend(record(ABORT_REQUEST, ID, &[]));
        bytes.extend(record(STDIN, ID, &[]));
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                params_event(ID, false, &[]),
                stdin_event(ID, b"part"),
                Event::Abort { id: ID },
            ]
        );
        // Active until the server writes END_REQUEST.
        assert!(p.is_active(ID));
        p.finished(ID);
        assert!(!p.is_active(ID));
        // After the body ended, too.
        let mut p = parser();
        let mut bytes = simple_request(ID, false, b"", b"");
        bytes.extend(record(ABORT_REQUEST, ID, &[]));
        assert_eq!(
            feed(&mut p, &bytes).unwrap().last(),
            Some(&Event::Abort { id: ID })
        );
    }

    #[test]
    fn ends_a_request_aborted_before_its_params_ended() {
        for keep_conn in [false, true] {
            let mut p = parser();
            let mut bytes = begin(ID, ROLE_RESPONDER, keep_conn);
            bytes.extend(record(PARAMS, ID, b"\x01\x01Kv"));
            bytes.extend(record(ABORT_REQUEST, ID, &[]));
            bytes.extend(record(PARAMS, ID, &[]));
            let events = feed(&mut p, &bytes).unwrap();
            assert_eq!(
                events,
                vec![Event::Reply(end_request(
                    ID,
                    ProtocolStatus::RequestComplete
                ))]
            );
            assert!(!p.is_active(ID));
            // regression (probe 389): without FCGI_KEEP_CONN it stayed open.
            assert_eq!(p.close_after_replies(), !keep_conn, "keep_conn {keep_conn}");
        }
    }

    #[test]
    fn ignores_stray_records_for_inactive_ids() {
        let mut p = parser();
        let mut bytes = Vec::new();
        for kind in [ABORT_REQUEST, PARAMS, STDIN, DATA, GET_VALUES] {
            bytes.extend(record(kind, 5, b"stray"));
            bytes.extend(record(kind, 5, &[]));
        }
        assert_eq!(feed(&mut p, &bytes).unwrap(), vec![]);
        assert_eq!(p.active(), 0);
        // Never begun: stray (reported once, the first id).
        assert_eq!(p.take_stray(), Some(5));
        assert_eq!(p.take_stray(), None);
        // And after a finished request, for its own id (§2.6): late, not stray, in
        // this parser and in the next one the connection's ids are given to.
        let mut p = parser();
        feed(&mut p, &simple_request(ID, true, b"", b"")).unwrap();
        p.finished(ID);
        let mut bytes = record(STDIN, ID, b"late");
        bytes.extend(record(ABORT_REQUEST, ID, &[]));
        assert_eq!(feed(&mut p, &bytes).unwrap(), vec![]);
        assert_eq!(p.take_stray(), None);
        let mut next = parser();
        next.set_begun(p.take_begun());
        assert_eq!(
            feed(&mut next, &record(PARAMS, ID, b"late")).unwrap(),
            vec![]
        );
        assert_eq!(next.take_stray(), None);
        assert_eq!(feed(&mut next, &record(STDIN, 300, b"x")).unwrap(), vec![]);
        assert_eq!(next.take_stray(), Some(300));
        // Given as late by another worker (the ids that travel with a hand-over): its
        // rest is no stray, and its empty STDIN ends it.
        let mut other = parser();
        other.set_begun(BegunIds::with_late(&[ID, ID, 0]));
        assert_eq!(other.late_ids(), [ID], "once each, never the management id");
        assert_eq!(
            feed(&mut other, &record(STDIN, ID, b"rest")).unwrap(),
            vec![]
        );
        assert_eq!(other.take_stray(), None);
        assert!(other.late_body());
        feed(&mut other, &record(STDIN, ID, b"")).unwrap();
        assert!(!other.late_body());
        // An abort for an id not in flight is no stray: it may follow a response.
        assert_eq!(
            feed(&mut next, &record(ABORT_REQUEST, 9, &[])).unwrap(),
            vec![]
        );
        assert_eq!(next.take_stray(), None);
    }

    #[test]
    fn remembers_begun_ids_of_every_size() {
        let mut b = BegunIds::default();
        for id in [1, 64, 65, 1000, u16::MAX] {
            assert!(!b.contains(id));
            b.mark(id);
            assert!(b.contains(id));
        }
        for id in [2, 63, 66, 999, u16::MAX - 1, 0] {
            assert!(!b.contains(id), "{id}");
        }
    }

    #[test]
    fn ignores_data_and_stdin_after_its_end() {
        let mut p = parser();
        let mut bytes = begin(ID, ROLE_RESPONDER, false);
        bytes.extend(record(DATA, ID, b"filter"));
        bytes.extend(record(PARAMS, ID, &[]));
        bytes.extend(record(DATA, ID, &[]));
        bytes.extend(record(STDIN, ID, &[]));
        bytes.extend(record(STDIN, ID, b"after the end"));
        bytes.extend(record(STDIN, ID, &[]));
        let events = feed(&mut p, &bytes).unwrap();
        assert_eq!(
            events,
            vec![params_event(ID, false, &[]), Event::StdinEnd { id: ID }]
        );
    }

    #[test]
    fn whole_request_takes_a_simple_request() {
        let block = params_block();
        for (keep_conn, body) in [(false, &b""[..]), (true, b"a=1&b=2")] {
            let bytes = simple_request(ID, keep_conn, &block, body);
            assert_eq!(
                whole_request(&bytes, 4096, 4096),
                Some(WholeRequest {
                    id: ID,
                    keep_conn,
                    params: Bytes::copy_from_slice(&block),
                    stdin: Bytes::copy_from_slice(body),
                })
            );
        }
    }

    #[test]
    fn whole_request_joins_records_and_skips_padding() {
        let block = params_block();
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut bytes = begin(300, ROLE_RESPONDER, false);
        // Unpadded records, as Apache sends them: version 1, PARAMS, id 300, len, pad 0.
        for piece in block.chunks(7) {
            bytes.extend_from_slice(&[1, PARAMS, 1, 44, 0, piece.len() as u8, 0, 0]);
            bytes.extend_from_slice(piece);
        }
        bytes.extend(record(PARAMS, 300, &[]));
        encode_stream(&mut bytes, STDIN, 300, &body);
        bytes.extend(record(STDIN, 300, &[]));
        let whole = whole_request(&bytes, 4096, 1 << 20).unwrap();
        assert_eq!((whole.id, whole.params[..].len()), (300, block.len()));
        assert_eq!(whole.params[..], block[..]);
        assert_eq!(whole.stdin[..], body[..]);
        // The slow path agrees.
        let events = feed(&mut parser(), &bytes).unwrap();
        assert_eq!(events[0], params_event(300, false, &block));
        let joined: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Event::Stdin { data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(joined, body);
    }

    #[test]
    fn whole_request_refuses_every_partial_request() {
        let bytes = simple_request(ID, false, &params_block(), b"body");
        for i in 0..bytes.len() {
            assert_eq!(whole_request(&bytes[..i], 4096, 4096), None, "prefix {i}");
        }
    }

    #[test]
    fn whole_request_refuses_anything_else() {
        let block = params_block();
        let good = simple_request(ID, false, &block, b"body");
        assert!(whole_request(&good, 4096, 4096).is_some());

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut trailing = good.clone();
        trailing.push(0);
        cases.push(("a trailing byte", trailing));
        let mut two = good.clone();
        two.extend(simple_request(2, false, &block, b""));
        cases.push(("two requests", two));
        let mut again = good.clone();
        again.extend(&good);
        cases.push(("the same request twice", again));
        let mut get_values = record(GET_VALUES, 0, b"\x0d\x00FCGI_MAX_REQS");
        get_values.extend(&good);
        cases.push(("GET_VALUES in front", get_values));
        let mut get_values_after = good.clone();
        get_values_after.extend(record(GET_VALUES, 0, &[]));
        cases.push(("GET_VALUES after", get_values_after));
        cases.push(("id 0", simple_request(0, false, &block, b"")));
        let mut role = good.clone();
        role[8..10].copy_from_slice(&ROLE_AUTHORIZER.to_be_bytes());
        cases.push(("an authorizer", role));
        let mut version = good.clone();
        version[0] = 2;
        cases.push(("a wrong version", version));
        cases.push(("HTTP", b"GET / HTTP/1.1\r\n\r\n".to_vec()));
        let mut short_begin = record(BEGIN_REQUEST, ID, &[0, 1, 0, 0, 0, 0, 0]);
        short_begin.extend_from_slice(&good[16..]);
        cases.push(("a 7-byte BEGIN body", short_begin));
        let mut other_id = begin(ID, ROLE_RESPONDER, false);
        other_id.extend(record(PARAMS, ID, &block));
        other_id.extend(record(PARAMS, 2, &[]));
        other_id.extend(record(STDIN, ID, &[]));
        cases.push(("PARAMS of another id", other_id));
        let mut abort = begin(ID, ROLE_RESPONDER, false);
        abort.extend(record(ABORT_REQUEST, ID, &[]));
        cases.push(("an abort", abort));
        let mut data = begin(ID, ROLE_RESPONDER, false);
        data.extend(record(PARAMS, ID, &[]));
        data.extend(record(DATA, ID, b"x"));
        data.extend(record(STDIN, ID, &[]));
        cases.push(("DATA", data));
        let mut no_params = begin(ID, ROLE_RESPONDER, false);
        no_params.extend(record(STDIN, ID, &[]));
        cases.push(("no PARAMS", no_params));
        cases.push(("nothing", Vec::new()));
        for (what, bytes) in cases {
            assert_eq!(whole_request(&bytes, 4096, 4096), None, "{what}");
        }
    }

    #[test]
    fn whole_request_refuses_past_the_limits() {
        let block = params_block();
        let bytes = simple_request(ID, false, &block, b"body");
        assert!(whole_request(&bytes, block.len(), 4).is_some());
        assert_eq!(whole_request(&bytes, block.len() - 1, 4), None);
        assert_eq!(whole_request(&bytes, block.len(), 3), None);
    }
}
