//! What woke a Python thread from the shared epoll: the one place that knows how each
//! kind of wake-up is packed into the 64-bit epoll data.
//!
//! ```text
//! 0                      the ready queue's eventfd
//! 1 ..= 2^32-2           listener i+1
//! 2^32-1                 FastCGI connections handed over by a leaving worker
//!                        (server::fastcgi::handover)
//! 2^32 + key             a FastCGI connection (parked, or serving a request inline:
//!                        its owner says which, see server::fastcgi::Owner)
//! 2^63 + key             a new connection waiting for its first bytes (one-shot,
//!                        see server::pending)
//! ```
//!
//! A FastCGI connection keeps one registration (edge-triggered) from its first parking
//! to its close, so whether it is idle or busy cannot be in the data without an
//! epoll_ctl per request; the connection's owner state tells them apart.

/// Listener indexes stay below this; connection keys are added to it.
const CONN_BASE: u64 = 1 << 32;
/// The hand-over channel, just below the connections.
const HANDOVER: u64 = CONN_BASE - 1;
/// Waiting connections' keys are added to this; FastCGI keys stay below it.
const FRESH_BASE: u64 = 1 << 63;

/// One epoll event's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// The ready queue has a request (or the server is stopping).
    Queue,
    /// Listener `i` has a connection to accept.
    Listener(usize),
    /// A leaving worker has handed a FastCGI connection over.
    Handover,
    /// FastCGI connection `key` has input (its next request, a multiplexed one, an
    /// abort, a close).
    Conn(u64),
    /// New connection `key`, waiting for its first bytes, has input (or closed).
    Fresh(u64),
}

impl Wake {
    /// The epoll data for this wake-up.
    pub fn encode(self) -> u64 {
        match self {
            Wake::Queue => 0,
            Wake::Listener(i) => {
                let i = i as u64 + 1;
                debug_assert!(i < HANDOVER, "listener index out of range");
                i
            }
            Wake::Handover => HANDOVER,
            // Keys count up from 0, one per connection: 2^63 - 2^32 of them.
            Wake::Conn(key) => CONN_BASE.wrapping_add(key),
            Wake::Fresh(key) => FRESH_BASE | key,
        }
    }

    /// The wake-up `data` stands for (every u64 decodes; only encoded ones occur).
    pub fn decode(data: u64) -> Wake {
        if data == 0 {
            Wake::Queue
        } else if data == HANDOVER {
            Wake::Handover
        } else if data < CONN_BASE {
            Wake::Listener((data - 1) as usize)
        } else if data >= FRESH_BASE {
            Wake::Fresh(data - FRESH_BASE)
        } else {
            Wake::Conn(data - CONN_BASE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for w in [
            Wake::Queue,
            Wake::Listener(0),
            Wake::Listener(7),
            Wake::Listener((HANDOVER - 2) as usize),
            Wake::Handover,
            Wake::Conn(0),
            Wake::Conn(12345),
            Wake::Conn(FRESH_BASE - CONN_BASE - 1),
            Wake::Fresh(0),
            Wake::Fresh(98765),
        ] {
            assert_eq!(Wake::decode(w.encode()), w, "{w:?}");
        }
    }

    #[test]
    fn kinds_never_share_a_value() {
        assert_eq!(Wake::Queue.encode(), 0);
        assert_eq!(Wake::Listener(0).encode(), 1);
        assert!(Wake::Handover.encode() > Wake::Listener((HANDOVER - 2) as usize).encode());
        assert!(Wake::Conn(0).encode() > Wake::Handover.encode());
        assert!(Wake::Fresh(0).encode() > Wake::Conn(FRESH_BASE - CONN_BASE - 1).encode());
    }
}
