//! What woke a Python thread from the shared epoll: the one place that knows how each
//! kind of wake-up is packed into the 64-bit epoll data.
//!
//! ```text
//! 0                      the ready queue's eventfd
//! 1 ..= 2^32-1           listener i+1
//! 2^32 + key             a parked (idle) FastCGI connection
//! 2^32 + key | 2^62      a FastCGI connection whose request is served inline (busy)
//! ```

/// Listener indexes and connection keys stay below this.
const CONN_BASE: u64 = 1 << 32;
/// Marks a connection whose request runs inline.
const BUSY: u64 = 1 << 62;
/// Connection keys are below this (keys count up from 0, one per connection).
const KEY_LIMIT: u64 = BUSY - CONN_BASE;

/// One epoll event's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// The ready queue has a request (or the server is stopping).
    Queue,
    /// Listener `i` has a connection to accept.
    Listener(usize),
    /// An idle FastCGI connection (its key) has its next request, or closed.
    Parked(u64),
    /// A FastCGI connection whose request runs inline got input (a multiplexed
    /// request, an abort, a close): the slow lane must read it.
    Busy(u64),
}

impl Wake {
    /// The epoll data for this wake-up.
    pub fn encode(self) -> u64 {
        match self {
            Wake::Queue => 0,
            Wake::Listener(i) => {
                let i = i as u64 + 1;
                debug_assert!(i < CONN_BASE, "listener index out of range");
                i
            }
            Wake::Parked(key) => CONN_BASE + (key % KEY_LIMIT),
            Wake::Busy(key) => (CONN_BASE + (key % KEY_LIMIT)) | BUSY,
        }
    }

    /// The wake-up `data` stands for (every u64 decodes; only encoded ones occur).
    pub fn decode(data: u64) -> Wake {
        if data == 0 {
            Wake::Queue
        } else if data < CONN_BASE {
            Wake::Listener((data - 1) as usize)
        } else if data & BUSY != 0 {
            Wake::Busy((data & !BUSY) - CONN_BASE)
        } else {
            Wake::Parked(data - CONN_BASE)
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
            Wake::Listener((CONN_BASE - 2) as usize),
            Wake::Parked(0),
            Wake::Parked(12345),
            Wake::Parked(KEY_LIMIT - 1),
            Wake::Busy(0),
            Wake::Busy(12345),
            Wake::Busy(KEY_LIMIT - 1),
        ] {
            assert_eq!(Wake::decode(w.encode()), w, "{w:?}");
        }
    }

    #[test]
    fn kinds_never_share_a_value() {
        assert_eq!(Wake::Queue.encode(), 0);
        assert_eq!(Wake::Listener(0).encode(), 1);
        assert_ne!(Wake::Parked(0).encode(), Wake::Busy(0).encode());
        assert!(Wake::Parked(0).encode() > Wake::Listener((CONN_BASE - 2) as usize).encode());
    }

    #[test]
    fn parked_and_busy_differ_only_in_the_busy_bit() {
        // The parking map is keyed by the encoded value: one connection is never under
        // both keys at once, and close_all tells idle from busy by the variant.
        let (p, b) = (Wake::Parked(9).encode(), Wake::Busy(9).encode());
        assert_eq!(p | BUSY, b);
    }
}
